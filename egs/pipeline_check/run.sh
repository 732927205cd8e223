#!/usr/bin/env bash
# A pipeline check, not a result: every stage of the default recipe on a small synthetic corpus (600
# training utterances) with a short training, in about 15 minutes on 2 CPU cores. Its WERs say that the
# pipeline works, nothing about the methods: the model is far from converged and the test set is small.
#   cd egs/pipeline_check && ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
exec ../../run.sh \
    --local_data_opts "--n_train 600 --n_dev 60 --n_test 100 --n_unseen 60 --n_perturbed 60" \
    --asr_config conf/train_asr_conformer.yaml \
    --quant_confs "conf/quant/w8_ptq.yaml conf/quant/w4.yaml conf/quant/mpq_one_stage_3bit.yaml conf/quant/mpq_kl_3bit.yaml conf/quant/fp32_cont.yaml" \
    "$@"
