#!/usr/bin/env bash
# Stage 1 of the default recipe: synthesise the embedded corpus into Kaldi data dirs.
#   local/data.sh [--datadir data] [--nj 2] [--n_train 3000 --n_dev 300 --n_test 500 --n_unseen 300] [--seed 1] [--train_speakers 10,3,3]
set -euo pipefail
datadir=data; nj=2; n_train=6000; n_dev=300; n_test=500; n_unseen=300; seed=1; train_speakers=20,5,5
. "$(dirname "$0")/../utils/parse_options.sh"
dir=$(dirname "$0")   # set after the options, so that no --dir can move it
# make_corpus.py imports mpq_plugins from the repository root, one level up from this script
export PYTHONPATH="$(cd "${dir}/.." && pwd)${PYTHONPATH:+:${PYTHONPATH}}"
python "${dir}/make_corpus.py" --datadir ${datadir} --wavdir ${datadir}/local/wav --nj ${nj} \
    --n_train ${n_train} --n_dev ${n_dev} --n_test ${n_test} --n_unseen ${n_unseen} --seed ${seed} --train_speakers ${train_speakers}
