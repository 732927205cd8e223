#!/usr/bin/env bash
# Prepare Kaldi data dirs for the LibriSpeech 100 h recipe:
#   local/data.sh [--corpus DIR] [--datadir DIR]
# writes <datadir>/{train_clean_100,dev_clean,dev_other,test_clean,test_other}.
set -euo pipefail

corpus="${LIBRISPEECH:-/data/LibriSpeech}"
datadir=data
sets=train-clean-100,dev-clean,dev-other,test-clean,test-other

usage() { echo "usage: $0 [--corpus DIR (default \$LIBRISPEECH or /data/LibriSpeech)] [--datadir DIR (default data)]" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --corpus) [ $# -ge 2 ] || { usage; exit 1; }; corpus="$2"; shift 2 ;;
        --corpus=*) corpus="${1#*=}"; shift ;;
        --datadir) [ $# -ge 2 ] || { usage; exit 1; }; datadir="$2"; shift 2 ;;
        --datadir=*) datadir="${1#*=}"; shift ;;
        --nj) [ $# -ge 2 ] || { usage; exit 1; }; shift 2 ;;  # accepted for run.sh; preparation is one process
        -h|--help) usage; exit 0 ;;
        *) echo "$0: unknown option: $1" >&2; usage; exit 1 ;;
    esac
done

if [ ! -d "${corpus}" ]; then
    echo "$0: LibriSpeech corpus dir '${corpus}' not found; pass --corpus DIR or set LIBRISPEECH" >&2
    echo "  (it must hold ${sets//,/ } as unpacked from openslr.org/12)" >&2
    exit 1
fi

# prep_librispeech.py sits beside this script and imports mpq_plugins from the repository root,
# three levels up
local_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${local_dir}/../../.." && pwd)"
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"

python "${local_dir}/prep_librispeech.py" --corpus "${corpus}" --sets "${sets}" --datadir "${datadir}"
