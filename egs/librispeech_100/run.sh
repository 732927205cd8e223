#!/usr/bin/env bash
# LibriSpeech 100 h: the paper-scale Conformer (GPU). Needs a local copy of LibriSpeech:
#   LIBRISPEECH=/path/to/LibriSpeech ./run.sh --ngpu 1
# Everything else (stages, options) is the top-level pipeline's: ../../run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
exec ../../run.sh \
    --local_data local/data.sh --local_data_opts "--corpus ${LIBRISPEECH:-/data/LibriSpeech}" \
    --train_set train_clean_100 --valid_set dev_clean \
    --test_sets "dev_clean dev_other test_clean test_other" --quant_test_sets "" --report_set test_clean \
    --token_type bpe --nbpe 5000 \
    --asr_config conf/train_asr_conformer.yaml --inference_config conf/decode_asr.yaml --acoustic_config "" \
    --lm none --nj 16 "$@"
