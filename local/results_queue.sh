#!/usr/bin/env bash
# The runs behind RESULTS.md on the default corpus, in the order that answers the open questions first;
# every step skips what is done, so a queue that was cut goes on where it stopped when started again.
#   local/results_queue.sh                 # from the recipe's root, in the background: hours to days on 2 cores
# Its report: local/budget_sweep.sh --stage 9 (the sweep), ./run.sh --stage 9 --quant_confs conf/quant/aio_d432_ff_w42.yaml
# (all-in-one); the tuning's record from the dev decodes: local/tuning_report.sh (results/tuning_2p5bit.md).
# 1. Stages 1-5 (the corpus and the FP32 Conformer, every core).
# 2. Two 1-thread lanes side by side (on 2 cores two 1-thread trainings do 1.41x the work of one 2-thread one;
#    a process of more threads beside another would slow both many times over):
#    a. README's main command's stages 6-9 (the default systems on every test set), w8_ptq and w4 decoded on
#       int8 kernels (conf/decode_asr_int8.yaml), the 3-bit budget of the sweep (local/budget_sweep.sh's confs)
#       seeds 1 and 2, then 3.5 bits (w3's size) seeds 1-3, the tuning at 2.5 bits (seed 1, decoded on dev too:
#       conf/quant/tuning/, results/tuning_mixed_precision.md), then 2.5 bits (each method as the tuning record
#       kept it: exp/queue/tuning_2p5bit.md and .kept, written here once its runs are decoded), equal compute, the rest;
#    b. all-in-one seed 1 (conf/quant/aio_d432_ff_w42.yaml: 12 nested systems and their twins), the 3-bit budget
#       seed 3, all-in-one with balanced losses (seed 1: the same twins), both all-in-one confs at seed 2, every
#       system every update (seed 1), both at seed 3, then lane a's budgets beside it (each step taken by the lane
#       that reaches it first).
#    w4, w3, 9.1x and 10.7x decide the highest lossless ratio, hence the 3-bit and 3.5-bit budgets first.
#   local/results_queue.sh --lane b        # one lane only (e.g. the other on a second machine sharing exp/)
# A step is run by one queue at a time (a lock beside its done file): two queues never train one system at once;
# a queue skips a step another one is running (and what depends on it: stages 6-9 on stages 1-5, the int8
# decodes on the default systems), so two queues started side by side share the sweep.
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
list=false   # --list: the quant confs of the lanes, one a line, and nothing run
lanes="a b"  # --lane a|b: one lane
while [ $# -gt 0 ]; do
    case "$1" in
        --list) list=true; shift;;
        --lane) case "${2:-}" in a|b) lanes=$2;; *) echo "$0: --lane takes a or b, not '${2:-}'" >&2; exit 1;; esac; shift 2;;
        *) echo "$0: unknown option $1 (--list, --lane a|b)" >&2; exit 1;;
    esac
done
if ! ${list}; then
mkdir -p ${q}
step baseline.done main.log "stages 1-5: corpus, FP32 Conformer" --stop_stage 5 || exit 1
fi

sweep() {   # sweep <lane log> <sets> <seeds> <conf>...: each seed in turn, every conf (conf/quant/<conf>.yaml)
    local out=$1 sets=$2 seeds=$3 s c tag=""; shift 3
    if ${list}; then printf 'conf/quant/%s.yaml\n' "$@"; return; fi
    case " ${sets} " in *" test "*) ;; *) tag=".${sets// /_}";; esac   # a run not decoded on test: its own done file
    for s in ${seeds}; do
        for c in "$@"; do
            step "${c//\//_}${tag}.seed${s}.done" ${out} "${c} seed ${s}" --nj 1 --stage 6 --stop_stage 8 \
                --seeds ${s} --quant_confs conf/quant/${c}.yaml --quant_test_sets "${sets}"
        done
    done
}
kept_file=${q}/tuning_2p5bit.kept   # the tuning record's choice per method: '<its conf> <the conf kept>' a line
# (written once: delete it, and exp/queue/tuning_2p5bit.md, to choose again after the tuning confs change)
tuned() {   # tuned <lane log>: true once the tuning's record is written (made here the first time all its runs are)
    ${list} && return 0
    [ -f ${kept_file} ] && return 0
    if "${root}/local/tuning_report.sh" --out ${q}/tuning_2p5bit.md --kept ${kept_file} >> ${q}/$1 2>&1; then
        log "the tuning's record: ${q}/tuning_2p5bit.md; kept: $(awk '$1 != $2 {printf "%s ", $2}' ${kept_file})"
    else
        log "the tuning's record is not complete yet ($1): the 2.5-bit budget waits for it"; return 1
    fi
}
kept() {   # kept <conf>...: each conf, or the variant the tuning kept for its method (conf/quant/tuning/...)
    local c k
    for c in "$@"; do
        k=""; ${list} || k=$(awk -v c="conf/quant/${c}.yaml" '$1 == c {print $2}' ${kept_file})
        if [ -n "${k}" ]; then k=${k#conf/quant/}; echo "${k%.yaml}"; else echo "${c}"; fi
    done
}
tier3="fp32_cont w4 w3 mpq_one_stage_3bit mpq_one_stage_3bit_out8 mpq_kl_3bit mpq_hessian_3bit mpq_supernet_3bit"
budgets() {   # <lane log>: the budgets after 3 bits, lane a's work, and lane b's once its own is done (shared)
    sweep $1 test "1 2 3" mpq_one_stage_3p5bit mpq_kl_3p5bit mpq_hessian_3p5bit mpq_supernet_3p5bit
    # the tuning (local/tuning_report.sh): each method's conf on dev and test (it is seed 1 of the 2.5-bit budget),
    # its variants on dev alone (the record's set; the test sets take no part in a choice)
    sweep $1 "dev test" 1 mpq_one_stage_2p5bit mpq_one_stage_2p5bit_teacherkl mpq_supernet_2p5bit mpq_kl_2p5bit \
        mpq_hessian_2p5bit
    sweep $1 dev 1 tuning/mpq_one_stage_2p5bit_lr0p5 tuning/mpq_one_stage_2p5bit_lr8 \
        tuning/mpq_one_stage_2p5bit_teacherkl_lr0p5 tuning/mpq_one_stage_2p5bit_teacherkl_lr8 \
        tuning/mpq_supernet_2p5bit_lr0p5 tuning/mpq_supernet_2p5bit_lr2 tuning/mpq_kl_2p5bit_utts8 \
        tuning/mpq_kl_2p5bit_utts32 tuning/mpq_hessian_2p5bit_utts16 tuning/mpq_hessian_2p5bit_utts64
    # the 2.5-bit budget: each method as the tuning left it (its conf, or the variant significantly better on dev)
    tuned $1 && sweep $1 test "1 2 3" w2 $(kept mpq_one_stage_2p5bit) mpq_one_stage_2p5bit_out8 \
        $(kept mpq_one_stage_2p5bit_teacherkl mpq_kl_2p5bit mpq_hessian_2p5bit mpq_supernet_2p5bit)
    sweep $1 test "1 2 3" mpq_one_stage_3bit_half mpq_kl_3bit_half mpq_hessian_3bit_half \
        mpq_one_stage_2p5bit_half mpq_kl_2p5bit_half mpq_hessian_2p5bit_half
    sweep $1 test "1 2 3" w1p6 w1 mpq_one_stage_2bit mpq_kl_2bit mpq_hessian_2bit mpq_supernet_2bit \
        mpq_one_stage_1p75bit mpq_kl_1p75bit mpq_hessian_1p75bit mpq_supernet_1p75bit
}
lane_a() {
    export OMP_NUM_THREADS=1
    if ! ${list}; then
        step default.done lane_a.log "stages 6-9: the default systems" --nj 1 --stage 6 || return 1
        step int8.done lane_a.log "w8_ptq and w4 on int8 kernels" --nj 1 --stage 7 --stop_stage 8 --test_sets test \
            --inference_config conf/decode_asr_int8.yaml --acoustic_config "" \
            --quant_confs "conf/quant/w8_ptq.yaml conf/quant/w4.yaml" || return 1
    fi
    sweep lane_a.log test "1 2" ${tier3}
    budgets lane_a.log
    ${list} || log "lane a: done"
}
lane_b() {   # all-in-one: the balanced conf's seed 1 decides which conf's seeds matter; its twins are the first's
    export OMP_NUM_THREADS=1
    sweep lane_b.log test 1 aio_d432_ff_w42
    sweep lane_b.log test 3 ${tier3}
    sweep lane_b.log test 1 aio_d432_ff_w42_balanced
    sweep lane_b.log test 2 aio_d432_ff_w42 aio_d432_ff_w42_balanced
    sweep lane_b.log test 1 aio_d432_ff_w42_every   # every system every update: is it the sharing or the updates?
    sweep lane_b.log test 3 aio_d432_ff_w42 aio_d432_ff_w42_balanced
    budgets lane_b.log
    ${list} || log "lane b: done"
}
if ${list}; then lane_a; lane_b; exit 0; fi
for l in ${lanes}; do lane_${l} & done
wait
