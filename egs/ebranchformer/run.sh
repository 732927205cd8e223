#!/usr/bin/env bash
# A model that is not our Conformer, on the default corpus: an E-Branchformer (stock ESPnet encoder) of the
# default Conformer's size, trained here (stage 5), then compressed with 4-bit QAT and one-stage mixed
# precision at 3 stored bits a parameter, beside the float control, over three seeds, decoded and judged
# like the default recipe's systems (RESULTS.md here): the float model on every test set, the others on test
# (the budget sweep's setting; --quant_test_sets "" decodes them on every set too).
# It reads the default recipe's data dirs (../../data, made there by stage 1; this recipe's stage 1 makes
# them if they are missing) and keeps its own statistics, LM and models under exp/.
#   cd egs/ebranchformer && ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
exec ../../run.sh --datadir ../../data --asr_config conf/train_asr_ebranchformer.yaml --seeds "1 2 3" --quant_test_sets test \
    --quant_confs "conf/quant/w4.yaml conf/quant/mpq_one_stage_3bit.yaml conf/quant/fp32_cont.yaml" "$@"
