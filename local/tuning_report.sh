#!/usr/bin/env bash
# The tuning record of the mixed-precision searches from the runs of conf/quant/tuning/ (local/results_queue.sh
# runs them at seed 1 and decodes them on dev): each method's conf (the `base:` its variants name) and its
# variants, judged on dev under the LM decode (mpq_plugins/eval/tuning.py).
#   local/tuning_report.sh                                   # -> results/tuning_2p5bit.md
#   local/tuning_report.sh --asr_exp exp/asr_myconf --out results/mine.md
#   local/tuning_report.sh --list                            # the groups, one a line, the method's conf first
#   local/tuning_report.sh --kept exp/queue/tuning_2p5bit.kept   # also each method's conf and the conf kept
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
asr_exp=exp/asr_train_asr_conformer
out=results/tuning_2p5bit.md
valid_set=dev
kept=""
list=false
while [ $# -gt 0 ]; do
    case "$1" in
        --asr_exp) asr_exp=$2; shift 2;;
        --out) out=$2; shift 2;;
        --valid_set) valid_set=$2; shift 2;;
        --kept) kept=$2; shift 2;;
        --list) list=true; shift;;
        *) echo "$0: unknown option $1 (--asr_exp DIR, --out FILE, --kept FILE, --valid_set SET, --list)" >&2; exit 1;;
    esac
done
declare -A variants
bases=()
for v in "${root}"/conf/quant/tuning/*.yaml; do
    base=$(sed -n 's/^base: *//p' "${v}" | head -1)
    [ -n "${base}" ] || { echo "$0: ${v}: a tuning conf names the conf it varies (base:)" >&2; exit 1; }
    base=$(basename "${base}" .yaml)
    [ -n "${variants[${base}]:-}" ] || bases+=("${base}")
    variants[${base}]+=",${asr_exp}_$(basename "${v}" .yaml)"
done
groups=""
for b in "${bases[@]}"; do
    [ -f "${root}/conf/quant/${b}.yaml" ] || { echo "$0: conf/quant/tuning/ varies conf/quant/${b}.yaml: no such file" >&2; exit 1; }
    groups="${groups} ${asr_exp}_${b}${variants[${b}]}"
done
if ${list}; then tr ' ' '\n' <<< "${groups# }"; exit 0; fi
. "${root}/path.sh"
mkdir -p "$(dirname "${out}")"
python -m mpq_plugins.bin.tuning_table --groups "${groups# }" --valid_set "${valid_set}" --out "${out}" \
    ${kept:+--kept "${kept}"} --title "Tuning of the mixed-precision searches at 2.5 stored bits"
