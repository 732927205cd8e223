#!/usr/bin/env bash
# LibriSpeech 100 h with a speech foundation model (GPU): CTC fine-tuning of wav2vec2.0-base or HuBERT-large
# on train-clean-100 (stage 5), then the compression systems (stage 6), decoded on dev/test clean and other.
# Needs a local copy of LibriSpeech and of the pretrained model in transformers' format (nothing is
# downloaded here; see README.md beside this file):
#   LIBRISPEECH=/data/LibriSpeech SSL_MODEL=/models/wav2vec2-base ./run.sh --ngpu 1
#   LIBRISPEECH=... SSL_MODEL=/models/hubert-large-ll60k ./run.sh --ngpu 1 --asr_config conf/train_asr_hubert_large.yaml
# Everything else (stages, options) is the top-level pipeline's: ../../run.sh --help
set -euo pipefail
model=$(realpath -m "${SSL_MODEL:-$(dirname "$0")/downloads/wav2vec2-base}")   # from where it was called
cd "$(dirname "$0")"
[ -f "${model}/config.json" ] || { echo "$0: ${model}/config.json: no such file (set SSL_MODEL to a local transformers model dir)" >&2; exit 1; }
exec ../../run.sh \
    --local_data ../librispeech_100/local/data.sh --local_data_opts "--corpus ${LIBRISPEECH:-/data/LibriSpeech}" \
    --train_set train_clean_100 --valid_set dev_clean \
    --test_sets "dev_clean dev_other test_clean test_other" --quant_test_sets "" --report_set test_clean \
    --token_type char \
    --asr_config conf/train_asr_wav2vec2_base.yaml --asr_args "--encoder_conf model_dir=${model}" \
    --inference_config conf/decode_ctc.yaml --acoustic_config "" --inference_model valid.cer_ctc.best.pth \
    --quant_confs "conf/quant/w8.yaml conf/quant/w4.yaml conf/quant/mpq_one_stage_3p5bit.yaml conf/quant/mpq_kl_3p5bit.yaml conf/quant/fp32_cont.yaml" \
    --finetune_config conf/finetune.yaml --lm none --nj 16 "$@"
