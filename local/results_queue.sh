#!/usr/bin/env bash
# The runs behind RESULTS.md on the default corpus, in the order that answers the open question first (the budget
# sweep of issue 17, 1.75 to 3 stored bits); every step skips what is done, so a queue that was cut goes on where it
# stopped when started again.
#   local/results_queue.sh                 # from the recipe's root, in the background: days on 2 cores
#   local/results_queue.sh --lane b        # one lane only (e.g. the other on a second machine sharing exp/)
#   local/results_queue.sh --list          # the quant confs in the order they run, one a line; nothing run
#   local/results_queue.sh --report        # RESULTS.md and results/*.png over the systems scored so far (while the
#                                          # lanes run too): the float model, then each conf's seeds in list order
# 1. Stages 1-5 (the corpus and the FP32 Conformer, every core).
# 2. The float model's decode weights tuned on dev and every test set decoded and scored (every core): once, before
#    the lanes, which would otherwise both start on them and write the same files.
# 3. Two 1-thread lanes side by side over one list, each step taken by the lane that reaches it first (on 2 cores
#    two 1-thread trainings do 1.41x the work of one 2-thread one; a process of more threads beside another would
#    slow both many times over). Seed by seed, 1 to 3: the float control, uniform 2, 1.6 and 1 bits, the four
#    searches at 2 and at 1.75 stored bits (the sweep's open end), uniform 3 bits, the searches at 2.5 and at 3
#    bits, one-stage and supernet with their output layers kept at 8 bits at 2 and 1.75 bits; then equal compute (the searches
#    on half the fine-tuning at 3 and 2.5 bits), seeds 1-3; then the lossless end (uniform 4 bits, one-stage and KL
#    at 3.5 stored bits), seeds 1-3; then README's main command's stages 6-9 (its systems
#    on every test set) and w8_ptq and w4 decoded on int8 kernels.
#    One-stage runs as the tuning at 2.5 bits kept it (conf/quant/mpq_one_stage_*_tuned.yaml;
#    results/tuning_2p5bit.md), the other searches with their confs, which hold the values that tuning kept.
# A step is run by one queue at a time (a lock beside its done file): two queues never train one system at once;
# a queue skips a step another one is running (and the int8 decodes while the default systems are not done), so
# two queues started side by side share the list.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
q=exp/queue
log() { echo "$(date '+%F %T') $*" >> ${q}/queue.log; }
step() {   # step <done file> <log> <what> run.sh options...: once, its done file written when it succeeds
    local done=${q}/$1 out=${q}/$2 what=$3 rc=0; shift 3
    [ -f ${done} ] && return 0
    exec {lock}> ${done}.lock
    if ! flock -n ${lock}; then exec {lock}>&-; log "${what}: running in another queue, skipped"; return 1; fi
    if [ -f ${done} ]; then exec {lock}>&-; return 0; fi   # finished by another queue in the meantime
    log "${what}"
    if nice -n 10 "${root}/run.sh" "$@" >> ${out} 2>&1; then date > ${done}; else log "${what}: FAILED (${out})"; rc=1; fi
    exec {lock}>&-
    return ${rc}
}
list=false   # --list: the quant confs of the list, one a line, and nothing run
report=false # --report: the report over the list's systems scored on test under both decodes, and nothing run
lanes="a b"  # --lane a|b: one lane
while [ $# -gt 0 ]; do
    case "$1" in
        --list) list=true; shift;;
        --report) report=true; shift;;
        --lane) case "${2:-}" in a|b) lanes=$2;; *) echo "$0: --lane takes a or b, not '${2:-}'" >&2; exit 1;; esac; shift 2;;
        *) echo "$0: unknown option $1 (--list, --report, --lane a|b)" >&2; exit 1;;
    esac
done

sweep() {   # sweep <lane log> <seeds> <conf>...: each seed in turn, every conf (conf/quant/<conf>.yaml), test set
    local out=$1 seeds=$2 s c; shift 2
    if ${list}; then printf 'conf/quant/%s.yaml\n' "$@"; return; fi
    for s in ${seeds}; do
        for c in "$@"; do
            step "${c}.seed${s}.done" ${out} "${c} seed ${s}" --nj 1 --stage 6 --stop_stage 8 \
                --seeds ${s} --quant_confs conf/quant/${c}.yaml --quant_test_sets test
        done
    done
}
searches() {   # searches <budget>...: the four searches' confs at each budget
    local b
    for b in "$@"; do echo mpq_one_stage_${b}_tuned mpq_kl_${b} mpq_hessian_${b} mpq_supernet_${b}; done
}
lane() {   # lane <a|b>
    local out=lane_$1.log s
    export OMP_NUM_THREADS=1
    for s in 1 2 3; do
        sweep ${out} ${s} fp32_cont w2 w1p6 w1 $(searches 2bit 1p75bit) w3 $(searches 2p5bit 3bit) \
            mpq_one_stage_2bit_tuned_out8 mpq_one_stage_1p75bit_tuned_out8 mpq_supernet_2bit_out8 mpq_supernet_1p75bit_out8
        ${list} && break   # the list once
    done
    sweep ${out} "1 2 3" mpq_one_stage_3bit_tuned_half mpq_kl_3bit_half mpq_hessian_3bit_half \
        mpq_one_stage_2p5bit_tuned_half mpq_kl_2p5bit_half mpq_hessian_2p5bit_half
    sweep ${out} "1 2 3" w4 mpq_one_stage_3p5bit_tuned mpq_kl_3p5bit   # the lossless end: uniform 4 bits, 3.5 stored bits
    ${list} && return 0
    step default.done ${out} "stages 6-9: the default systems" --nj 1 --stage 6 || return 1
    step int8.done ${out} "w8_ptq and w4 on int8 kernels" --nj 1 --stage 7 --stop_stage 8 --test_sets test \
        --inference_config conf/decode_asr_int8.yaml --acoustic_config "" \
        --quant_confs "conf/quant/w8_ptq.yaml conf/quant/w4.yaml" || return 1
    log "lane $1: done"
}
if ${list}; then lane a; exit 0; fi
if ${report}; then
    float=exp/asr_train_asr_conformer decodes="decode_asr_packed decode_acoustic_packed" systems=""
    scored() { local d; for d in ${decodes}; do [ -s $1/${d}/test/score_wer/result.txt ] || return 1; done; }
    scored ${float} || { echo "$0: ${float} is not scored on test under ${decodes} yet: no report" >&2; exit 1; }
    for c in $(list=true; lane a); do
        for s in 1 2 3; do
            d=${float}_$(basename ${c} .yaml)$([ ${s} = 1 ] || echo _seed${s})
            if scored ${d}; then systems="${systems} ${d}"; fi
        done
    done
    . "${root}/path.sh"
    exec python -m mpq_plugins.bin.results --baseline ${float} --systems "${systems# }" --main_set test \
        --valid_set dev --decode "${decodes}" --out RESULTS.md
fi
mkdir -p ${q}
step baseline.done main.log "stages 1-5: corpus, FP32 Conformer" --stop_stage 5 || exit 1
step float.done main.log "the float model: decode weights tuned on dev, every test set decoded and scored" \
    --nj 2 --stage 6 --stop_stage 8 --quant_confs "" || exit 1
for l in ${lanes}; do lane ${l} & done
wait
