#!/usr/bin/env bash
# Stage 1 of the default recipe: synthesise the embedded corpus into Kaldi data dirs.
#   local/data.sh [--datadir data] [--nj 2] [--n_train 6000 --n_dev 1000 --n_test 3300 --n_unseen 1400 --n_perturbed 1400]
#       [--seed 1] [--train_speakers 20,5,5]
# Test sets large enough for MAPSSWE to see a loss: test about 25,000 words, test_unseen_voice and
# test_perturbed (test sentences under acoustic conditions training never saw) about 10,000 each.
set -euo pipefail
datadir=data; nj=2; n_train=6000; n_dev=1000; n_test=3300; n_unseen=1400; n_perturbed=1400; seed=1; train_speakers=20,5,5
. "$(dirname "$0")/../utils/parse_options.sh"
dir=$(dirname "$0")   # set after the options, so that no --dir can move it
# make_corpus.py imports mpq_plugins from the repository root, one level up from this script
export PYTHONPATH="$(cd "${dir}/.." && pwd)${PYTHONPATH:+:${PYTHONPATH}}"
python "${dir}/make_corpus.py" --datadir ${datadir} --wavdir ${datadir}/local/wav --nj ${nj} \
    --n_train ${n_train} --n_dev ${n_dev} --n_test ${n_test} --n_unseen ${n_unseen} --n_perturbed ${n_perturbed} \
    --seed ${seed} --train_speakers ${train_speakers}
