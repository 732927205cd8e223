#!/usr/bin/env bash
# The budget sweep of mixed-precision quantization on the default recipe: one-stage, KL, Hessian and
# supernet at 3.5, 3, 2.5, 2 and 1.75 stored bits a parameter (whole packed file: 9.1x, the size of uniform
# w3, to 18.3x), the
# uniform systems 4, 3, 2, 1.6 (ternary) and 1 bit, the searched methods with half the fine-tuning
# (equal compute), one-stage as the tuning at 2.5 bits kept it (search on the teacher's KL, logit_lr 8) and the float
# control, each over the seeds; then one report over all of them.
#   local/budget_sweep.sh                      # stages 6-8 seed by seed (test set only), then stage 9
#   local/budget_sweep.sh --seeds "2 3"        # some seeds (their report: --stage 9 --seeds "1 2 3")
#   local/budget_sweep.sh --stage 9            # the report alone
#   local/budget_sweep.sh --list               # the quant confs, one a line
# Needs the recipe's stages 1-5 done (./run.sh --stop_stage 5). Every stage skips what is done, so a
# cut sweep goes on where it stopped. Other options go to run.sh as they are (e.g. --nj 1).
set -euo pipefail
seeds="1 2 3"
stage=6
stop_stage=9
list=false
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=$2; shift 2;;
        --stage) stage=$2; shift 2;;
        --stop_stage) stop_stage=$2; shift 2;;
        --list) list=true; shift;;
        *) [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }; rest+=("$1" "$2"); shift 2;;
    esac
done
confs="fp32_cont w4 w3 w2 w1p6 w1"
for b in 3p5bit 3bit 2p5bit 2bit 1p75bit; do
    for m in one_stage kl hessian supernet; do confs="${confs} mpq_${m}_${b}"; done
done
for b in 3bit 2p5bit; do
    for m in one_stage kl hessian; do confs="${confs} mpq_${m}_${b}_half"; done
done
confs="${confs} mpq_one_stage_3bit_out8 mpq_one_stage_2p5bit_out8"   # the output layers kept out of the search at 8 bits
confs="${confs} mpq_one_stage_2p5bit_teacherkl"   # the search learns from the teacher's KL alone
for b in 3p5bit 3bit 2p5bit 2bit 1p75bit; do confs="${confs} mpq_one_stage_${b}_tuned"; done   # as the tuning kept it
confs="${confs} mpq_one_stage_3bit_tuned_half mpq_one_stage_2p5bit_tuned_half"
confs="${confs} mpq_one_stage_2bit_tuned_out8 mpq_one_stage_1p75bit_tuned_out8"   # as tuned, output layers at 8 bits
confs="${confs} mpq_supernet_2bit_out8 mpq_supernet_1p75bit_out8"   # the other gradient search, the same
paths=""
for c in ${confs}; do
    [ -f "${root}/conf/quant/${c}.yaml" ] || { echo "$0: conf/quant/${c}.yaml: no such file" >&2; exit 1; }
    paths="${paths} conf/quant/${c}.yaml"
done
if ${list}; then tr ' ' '\n' <<< "${paths# }"; exit 0; fi
common=(--quant_confs "${paths# }" --quant_test_sets test "${rest[@]}")
if [ "${stage}" -le 8 ]; then
    for seed in ${seeds}; do
        "${root}/run.sh" --stage "${stage}" --stop_stage "$(( stop_stage < 8 ? stop_stage : 8 ))" --seeds "${seed}" "${common[@]}"
    done
fi
if [ "${stop_stage}" -ge 9 ]; then
    "${root}/run.sh" --stage 9 --seeds "${seeds}" "${common[@]}"
fi
