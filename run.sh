#!/usr/bin/env bash
# mpq-asr recipe: synthesise the default corpus, train an FP32 ESPnet Conformer, quantize it (QAT
# from the FP32 checkpoint, bit-packed files), decode every system from its packed file, score.
#   ./run.sh                          # everything
#   ./run.sh --stage 7 --stop_stage 9 # decode, score and report again
#   ./run.sh --stage 9                # the report alone: MAPSSWE, RESULTS.md, plots
# Options are the variables below (--name value). egs/*/run.sh call this script with their own.
set -euo pipefail

stage=1               # first stage to run (1-9, the stages below)
stop_stage=9          # last stage to run
nj=2                  # parallel jobs: synthesis and decoding
ngpu=0                # GPUs per node for training (ESPnet launcher)
num_nodes=1           # nodes for training (Slurm: cmd_backend=slurm)
datadir=data          # Kaldi data dirs
expdir=exp            # models, decodes, scores
local_data=""         # stage 1 script writing ${datadir}/{train,dev,...}; default: local/data.sh (synthetic corpus)
local_data_opts=""    # extra options for it
train_set=train
valid_set=dev
fs=16000              # sample rate of the audio (every data dir is checked for it)
min_audio_samples=1600  # the shortest audio accepted: 0.1 s at 16 kHz, the 7 frames the conv subsampling needs
test_sets="dev test test_unseen_voice test_perturbed"
quant_test_sets=""    # sets decoded for the quantized systems ("" = all of ${test_sets})
report_set=test       # the test set of the lossless verdict (MAPSSWE against float32) in RESULTS.md
token_type=char       # char | bpe | word
nbpe=300
asr_config=conf/train_asr_conformer.yaml
inference_config=conf/decode_asr.yaml       # the main decode (conf/decode_espnet.yaml: ESPnet's joint beam search)
acoustic_config=conf/decode_acoustic.yaml   # a second decode without the LM, verdicts under both ("": none)
lm=ngram              # LM trained on the corpus text for decoding: ngram (word n-gram, also the lexicon:
                      # char tokens only), rnn (ESPnet LM of lm_config) or none
ngram_order=3
lm_vocab=""           # word list of the n-gram LM; default: ${datadir}/local/corpus/vocab.txt when it exists
lm_config=conf/train_lm.yaml
lm_train_text=""      # Kaldi text file for the LM; default: ${datadir}/local/corpus/lm_train.txt
lm_args=""            # extra options for espnet2.bin.lm_train
inference_model=valid.acc.best.pth  # the checkpoint of each system that is packed and decoded: the best on
                      # the validation set, for the float model as for every fine-tuned system (one-epoch
                      # fine-tuning has no n best to average, so averaging only the float model would favour it)
finetune_config=conf/finetune.yaml  # fine-tuning options shared by every quant conf (and the float control)
seeds="1"             # fine-tuning seeds: each quant conf (PTQ: only the first) is trained once per seed;
                      # seed 1 makes exp/asr_<tag>_<conf>, seed k exp/asr_<tag>_<conf>_seed<k>
quant_confs="conf/quant/w8_ptq.yaml conf/quant/w4.yaml conf/quant/w3.yaml conf/quant/w2.yaml conf/quant/mpq_one_stage_3bit.yaml conf/quant/mpq_kl_3bit.yaml conf/quant/fp32_cont.yaml"  # systems of the quantize stage
                      # (conf/quant/*.yaml; fp32_cont: the float control, fine-tuned like the others)
asr_tag=""            # experiment name; default: the config's file name (an imported model: its dir's name)
asr_model_dir=""      # an ESPnet ASR model trained elsewhere (its exp dir, or an unpacked model-zoo dir): stage 2
                      # imports it into exp/asr_<tag> (mpq_plugins.bin.import_model), stage 5 trains nothing, and
                      # stages 6-9 compress it; its config, tokens and normalization replace --asr_config's
asr_model_file=""     # the imported model's checkpoint (default: the best one beside its config.yaml)
                      # --asr_model_dir may also be a transformers wav2vec2/HuBERT model fine-tuned with CTC
                      # (Wav2Vec2ForCTC, HubertForCTC: config.json, weights, vocab.json), with
                      # --inference_model valid.cer_ctc.best.pth (a CTC model is chosen by validation CER)
asr_token_case=""     # such a model's letters in the corpus's case: lower or upper ("": as its vocab.json)
asr_args=""           # extra options for ESPnet's asr_train (mpq_plugins.bin.asr_train: ESPnet's, plus our
                      # quantization options and encoders: hf_ssl, wav2vec2/HuBERT from a local directory)
inference_args=""     # extra options for decoding
help_message="Usage: $0 [--stage N] [--stop_stage M] [--<variable> <value>] (see the top of $0)"

# run.sh may be called from a recipe dir under egs/: data and exp are relative to the current dir,
# the scripts are found next to this file, and a recipe's own cmd.sh wins over the top-level one.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
${root}/tools/setup.sh   # idempotent: installs only what is missing
. ${root}/path.sh
if [ -f cmd.sh ]; then . ./cmd.sh; else . ${root}/cmd.sh; fi
. ${root}/utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 1; }
[ -z "${local_data}" ] && local_data=${root}/local/data.sh
# a config that is not found from the current dir is taken from the top-level conf/
for v in asr_config inference_config lm_config finetune_config acoustic_config; do
    [ "${v}" = acoustic_config ] && [ -z "${acoustic_config}" ] && continue
    [ -f "${!v}" ] || [ ! -f "${root}/${!v}" ] || printf -v "${v}" '%s' "${root}/${!v}"
    [ -f "${!v}" ] || { echo "$0: --${v} ${!v}: no such file" >&2; exit 1; }
done
[ -z "${lm_train_text}" ] && lm_train_text=${datadir}/local/corpus/lm_train.txt
qconfs=""
for qc in ${quant_confs}; do
    [ -f "${qc}" ] || [ ! -f "${root}/${qc}" ] || qc=${root}/${qc}
    [ -f "${qc}" ] || { echo "$0: --quant_confs: ${qc}: no such file" >&2; exit 1; }
    qconfs="${qconfs} ${qc}"
done
usage() { echo "$0: $*" >&2; echo "${help_message}" >&2; exit 1; }
is_int() { case "$1" in ''|*[!0-9]*) return 1;; esac; }
for v in stage stop_stage; do
    is_int "${!v}" && [ "${!v}" -ge 1 ] && [ "${!v}" -le 9 ] || usage "--${v} ${!v}: expected a stage number, 1 to 9"
done
[ "${stage}" -le "${stop_stage}" ] || usage "--stage ${stage} is after --stop_stage ${stop_stage}: nothing to run"
for v in nj nbpe ngram_order fs min_audio_samples; do
    is_int "${!v}" && [ "${!v}" -ge 1 ] || usage "--${v} ${!v}: expected a positive integer"
done
for v in ngpu num_nodes; do is_int "${!v}" || usage "--${v} ${!v}: expected an integer"; done
[ -n "${seeds}" ] || usage "--seeds: expected one or more integers"
for v in ${seeds}; do is_int "${v}" || usage "--seeds ${seeds}: expected integers"; done
[ "${num_nodes}" -ge 1 ] || usage "--num_nodes ${num_nodes}: expected at least 1"
case "${lm}" in ngram|rnn|none) ;; *) usage "--lm ${lm}: expected ngram, rnn or none";; esac
# a lexicon search reads stage 4's word n-gram (lm.arpa, words.txt): say so now, not after training
for c in ${inference_config} ${acoustic_config}; do
    if [ "$(sed -n 's/^search: *\([a-z]*\).*/\1/p' ${c})" = lexicon ] && [ "${lm}" != ngram ]; then
        usage "${c} has search: lexicon, which needs --lm ngram (the word n-gram and its lexicon), not --lm ${lm}; decode with conf/decode_acoustic.yaml or conf/decode_espnet.yaml instead"
    fi
done
case "${token_type}" in char|bpe|word) ;; *) usage "--token_type ${token_type}: expected char, bpe or word";; esac

if [ -z "${asr_tag}" ] && [ -n "${asr_model_dir}" ]; then asr_tag=$(basename "$(realpath -m "${asr_model_dir}")"); fi
[ -z "${asr_tag}" ] && asr_tag=$(basename "${asr_config}" .yaml)
token_name=${token_type}; bpe_opts=""
if [ "${token_type}" = bpe ]; then token_name=bpe_unigram${nbpe}; fi
token_dir=${datadir}/token_list/${token_name}
[ "${token_type}" = bpe ] && bpe_opts="--bpemodel ${token_dir}/bpe.model"
stats_dir=${expdir}/asr_stats_${token_name}
asr_exp=${expdir}/asr_${asr_tag}
norm_opts="--normalize global_mvn --normalize_conf stats_file=${stats_dir}/train/feats_stats.npz"
# an imported model brings its own token list, sentencepiece model, normalization and config (stage 2 writes them)
imported() {
    [ -n "${asr_model_dir}" ] || return 0
    token_dir=${asr_exp} stats_dir=${expdir}/asr_stats_${asr_tag} asr_config=${asr_exp}/config.yaml norm_opts=""
    [ -f ${asr_config} ] || return 0
    token_type=$(sed -n 's/^token_type: *//p' ${asr_config}); bpe_opts=""
    [ "${token_type}" != bpe ] || bpe_opts="--bpemodel ${asr_exp}/bpe.model"
}
# transformers (a third of every ESPnet process's start) is hidden from a run whose configs need none of it
hide_transformers() {
    local why
    why=$(python -m mpq_plugins.bin.needs_transformers ${asr_config} ${finetune_config} ${qconfs} \
        $([ "${lm}" != rnn ] || echo ${lm_config}) --args "${asr_args}")
    export MPQ_HIDE_TRANSFORMERS=$([ -z "${why}" ] && echo 1 || echo 0)
}
imported
hide_transformers
# a config without a normalization layer (a foundation model reading the waveform) gets no global MVN
if grep -Eq '^normalize: *(null|none|~)? *$' ${asr_config}; then norm_opts=""; fi
lm_exp=${expdir}/lm_$(basename "${lm_config}" .yaml)_${token_type}
if [ "${lm}" = ngram ]; then lm_exp=${expdir}/lm_word_${ngram_order}gram; fi
trap 'echo "$0: failed (line ${LINENO}); see the messages above" >&2' ERR
rotate_log() { local n=1; [ -f "$1" ] || return 0; while [ -f "$1.$n" ]; do n=$((n + 1)); done; mv "$1" "$1.$n"; }
log() { echo "$(date '+%H:%M:%S') [run.sh stage ${1}] ${*:2}"; }
# the data options shared by collect-stats and training
data_args() {
    echo --token_type ${token_type} --token_list ${token_dir}/tokens.txt ${bpe_opts} \
        --use_preprocessor true --cleaner none --g2p none --non_linguistic_symbols none \
        --train_data_path_and_name_and_type ${datadir}/${train_set}/wav.scp,speech,sound \
        --train_data_path_and_name_and_type ${datadir}/${train_set}/text,text,text \
        --valid_data_path_and_name_and_type ${datadir}/${valid_set}/wav.scp,speech,sound \
        --valid_data_path_and_name_and_type ${datadir}/${valid_set}/text,text,text
}

# validate <set>...: stop with one line per problem (file, line, what) before any stage reads them
validate() {
    local d
    for d in "$@"; do
        python -m mpq_plugins.bin.validate_data_dir --data ${datadir}/${d} --sample_rate ${fs} \
            --min_samples ${min_audio_samples} >/dev/null
    done
}

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log 1 "data: ${local_data} -> ${datadir}/"
    ${local_data} --datadir ${datadir} --nj ${nj} ${local_data_opts}
fi
# the LM's vocabulary (the lexicon of the search): its letters are char tokens too (stage 2)
if [ -z "${lm_vocab}" ] && [ "${lm}" = ngram ] && [ -f ${datadir}/local/corpus/vocab.txt ]; then
    lm_vocab=${datadir}/local/corpus/vocab.txt
fi
if [ ${stage} -le 8 ]; then   # stages 1-8 read the data dirs: checked before any of them runs
    validate $(echo ${train_set} ${valid_set} ${test_sets} | tr ' ' '\n' | sort -u)
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ] && [ -n "${asr_model_dir}" ]; then
    log 2 "import: ${asr_model_dir} -> ${asr_exp}/ (config, tokens, checkpoint)"
    python -m mpq_plugins.bin.import_model --model_dir ${asr_model_dir} ${asr_model_file:+--model_file ${asr_model_file}} \
        ${asr_token_case:+--token_case ${asr_token_case}} --checkpoint_name ${inference_model} --out_dir ${asr_exp}
    imported
    hide_transformers
elif [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log 2 "tokens: ${token_type} from ${datadir}/${train_set}/text -> ${token_dir}/"
    python -m mpq_plugins.bin.make_tokens --text ${datadir}/${train_set}/text \
        --token_type ${token_type} --nbpe ${nbpe} ${lm_vocab:+--lexicon ${lm_vocab}} --output_dir ${token_dir}
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log 3 "stats: ESPnet collect_stats -> ${stats_dir}/"
    rm -rf ${stats_dir}.tmp
    ${train_cmd} ${stats_dir}.tmp/stats.log python -m mpq_plugins.bin.asr_train --collect_stats true \
        --config ${asr_config} $(data_args) --output_dir ${stats_dir}.tmp \
        --train_shape_file ${datadir}/${train_set}/wav.scp --valid_shape_file ${datadir}/${valid_set}/wav.scp \
        --ngpu 0 --num_workers ${nj} ${asr_args}
    for s in train valid; do   # text lengths in tokens, and the vocabulary size, as ESPnet's trainer expects
        awk -v N=$(wc -l < ${token_dir}/tokens.txt) '{print $0 "," N}' ${stats_dir}.tmp/${s}/text_shape \
            > ${stats_dir}.tmp/${s}/text_shape.${token_type}
    done
    rm -rf ${stats_dir} && mv ${stats_dir}.tmp ${stats_dir}
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ] && [ "${lm}" = ngram ]; then
    log 4 "LM: word ${ngram_order}-gram on ${lm_train_text} -> ${lm_exp}/"
    python -m mpq_plugins.bin.train_word_lm --text ${lm_train_text} --valid ${datadir}/${valid_set}/text \
        --order ${ngram_order} ${lm_vocab:+--vocab ${lm_vocab}} --out ${lm_exp}/lm.json
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ] && [ "${lm}" = rnn ]; then
    log 4 "LM: ESPnet lm_train (${lm_config}) on ${lm_train_text} -> ${lm_exp}/"
    lm_data="--token_type ${token_type} --token_list ${token_dir}/tokens.txt ${bpe_opts} --cleaner none --g2p none
        --non_linguistic_symbols none
        --train_data_path_and_name_and_type ${lm_train_text},text,text
        --valid_data_path_and_name_and_type ${datadir}/${valid_set}/text,text,text"
    rm -rf ${lm_exp}/stats
    ${train_cmd} ${lm_exp}/stats.log python -m espnet2.bin.lm_train --collect_stats true --config ${lm_config} \
        ${lm_data} --train_shape_file ${lm_train_text} --valid_shape_file ${datadir}/${valid_set}/text \
        --output_dir ${lm_exp}/stats.tmp --ngpu 0 ${lm_args}
    mv ${lm_exp}/stats.tmp ${lm_exp}/stats
    rotate_log ${lm_exp}/train.log
    python -m mpq_plugins.bin.launch --cmd "${cuda_cmd} --name lm_${asr_tag}" --log ${lm_exp}/train.log \
        --ngpu ${ngpu} --num_nodes ${num_nodes} --init_file_prefix ${lm_exp}/.dist_init_ \
        --multiprocessing_distributed true -- \
        python -m espnet2.bin.lm_train --config ${lm_config} ${lm_data} --output_dir ${lm_exp} \
        --train_shape_file ${lm_exp}/stats/train/text_shape --valid_shape_file ${lm_exp}/stats/valid/text_shape \
        --fold_length 150 --resume true ${lm_args}
fi

fold_opts="--fold_length 80000 --fold_length 150"   # ESPnet's length folding of speech (samples) and text (tokens)
# train_asr <entry point> <config> <outdir> [options]: ESPnet training through ESPnet's launcher
# (${timer}, when set, is a command prefix that times it)
train_asr() {
    local module=$1 config=$2 dir=$3; shift 3
    mkdir -p ${dir}
    python -m mpq_plugins.bin.check_resume --exp_dir ${dir} --token_list ${token_dir}/tokens.txt
    rotate_log ${dir}/train.log   # a resumed run keeps the log of the epochs before it
    ${timer:-} python -m mpq_plugins.bin.launch --cmd "${cuda_cmd} --name train_$(basename ${dir})" --log ${dir}/train.log \
        --ngpu ${ngpu} --num_nodes ${num_nodes} --init_file_prefix ${dir}/.dist_init_ \
        --multiprocessing_distributed true -- \
        python -m ${module} --config ${config} $(data_args) --output_dir ${dir} \
        --train_shape_file ${stats_dir}/train/speech_shape --train_shape_file ${stats_dir}/train/text_shape.${token_type} \
        --valid_shape_file ${stats_dir}/valid/speech_shape --valid_shape_file ${stats_dir}/valid/text_shape.${token_type} \
        ${norm_opts} --resume true ${fold_opts} ${asr_args} "$@"
    python -m mpq_plugins.bin.plot_training --exp_dir ${dir}
}

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && [ -n "${asr_model_dir}" ]; then
    log 5 "train: nothing, ${asr_exp} is imported from ${asr_model_dir}"
elif [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    # a finished training is not resumed (after an early stop ESPnet would train one more epoch, and every
    # system made from the float model would be made again): train.done holds the digest of the config
    # and the --asr_args of the run that finished; a killed run has none and resumes
    done_stamp="$(sha256sum < ${asr_config} | cut -d' ' -f1) ${asr_args}"
    if [ -f ${asr_exp}/${inference_model} ] && [ "$(cat ${asr_exp}/train.done 2>/dev/null)" = "${done_stamp}" ]; then
        log 5 "train: nothing to do: ${asr_exp}/ finished its training with this config and --asr_args (train.done)"
    else
        log 5 "train: ESPnet asr_train (${asr_config}) -> ${asr_exp}/ (log: ${asr_exp}/train.log)"
        rm -f ${asr_exp}/train.done
        train_asr mpq_plugins.bin.asr_train ${asr_config} ${asr_exp}
        echo "${done_stamp}" > ${asr_exp}/train.done
    fi
fi

# the systems: the float model, then one per quant conf (exp/asr_<tag>_<conf name>)
# conf_method <quant conf>: its `method:` line (every quant conf states its own: mpq_plugins/confio.py)
conf_method() { sed -n 's/^method: *\([a-z_]*\).*/\1/p' "$1"; }
seeds_of() { if [ "$(conf_method $1)" = ptq ]; then echo ${seeds%% *}; else echo ${seeds}; fi; }   # PTQ: nothing to seed
system_dir() { echo ${asr_exp}_$(basename $1 .yaml)$([ "$2" = 1 ] || echo _seed$2); }           # <conf> <seed>
# an all-in-one conf stands for its exported systems and their twins (<exp>_<system>, <twins>_<system>_twin):
# its own twins, or with `twins_from: other.yaml` those the other conf trained at the same seed (checked equal)
twins_from() { sed -n 's/^twins_from: *\([^ #]*\).*/\1/p' "$1"; }
twins_of() { local t=$(twins_from $1); system_dir ${t:-$1} $2; }                                  # <conf> <seed>
aio_systems() {   # <run dir> <twins' prefix>
    python -m mpq_plugins.bin.export_nested --config $1/config.yaml --list | sed "s|.*|$1_&\n$2_&_twin|"
}
all_systems() {   # the float model, then every system of --quant_confs (after stage 6 made them), each once
    local qc seed
    echo ${asr_exp}
    for qc in ${qconfs}; do for seed in $(seeds_of ${qc}); do
        if [ "$(conf_method ${qc})" = all_in_one ]; then
            [ ! -f $(system_dir ${qc} ${seed})/config.yaml ] || aio_systems $(system_dir ${qc} ${seed}) $(twins_of ${qc} ${seed})
        else
            system_dir ${qc} ${seed}
        fi
    done; done | awk '!seen[$0]++'
}
[ -z "${quant_test_sets}" ] && quant_test_sets=${test_sets}
sets_of() { if [ "$1" = "${asr_exp}" ]; then echo ${test_sets}; else echo ${quant_test_sets}; fi; }

# pack <exp dir> [timer]: its packed file, unless newer than the checkpoint (so that decodes stay up to date)
pack() {
    [ ${1}/packed.safetensors -nt ${1}/${inference_model} ] && return 0
    ${2:-} python -m mpq_plugins.bin.pack --asr_train_config ${1}/config.yaml \
        --asr_model_file ${1}/${inference_model} --out ${1}/packed.safetensors
}
# trained <exp dir>: its final model is newer than its training config and the float model (quant_config
# rewrites the config only when it changes): a rerun neither trains nor times it again
trained() { [ ${1}/${inference_model} -nt ${1}/train_config.yaml ] && [ ${1}/${inference_model} -nt ${asr_exp}/${inference_model} ]; }

# quantize_system <quant conf> <exp dir>: from the float checkpoint to the packed file and the system's
# record (system.yaml), timing every step into compression_time.json. By the conf's method:
#   ptq: the float weights quantized, no training; float, qat, one_stage: one fine-tuning run (one_stage
#   learns its bits in it); kl, hessian: a sensitivity search, then QAT with its bits; supernet: a search
#   run (the one-stage model for search_steps updates), then QAT from the float model with its bits.
quantize_system() {
    local qc=$1 qexp=$2 seed=$3 method float_model=${asr_exp}/${inference_model}
    local qtime="python -m mpq_plugins.bin.timed --log ${qexp}/compression_time.json --what"
    local compose="python -m mpq_plugins.bin.quant_config --base ${asr_config} --finetune ${finetune_config}
        --quant_conf ${qc} --token_list ${token_dir}/tokens.txt ${fold_opts}
        --train_shape_file ${stats_dir}/train/speech_shape --train_shape_file ${stats_dir}/train/text_shape.${token_type}
        --teacher_model ${float_model}"
    method=$(conf_method ${qc})
    case ${method} in
    ptq)
        [ ${qexp}/${inference_model} -nt ${qc} ] && [ ${qexp}/${inference_model} -nt ${float_model} ] ||
            ${qtime} train -- python -m mpq_plugins.bin.ptq --asr_train_config ${asr_exp}/config.yaml \
                --asr_model_file ${float_model} --quant_conf ${qc} --out ${qexp}/${inference_model};;
    float|qat|one_stage)
        ${compose} --out ${qexp}/train_config.yaml
        trained ${qexp} || timer="${qtime} train --resumable ${qexp} --" train_asr mpq_plugins.bin.asr_train ${qexp}/train_config.yaml \
            ${qexp} --init_param ${float_model} --seed ${seed};;
    kl|hessian|supernet)
        if [ ! ${qexp}/bits.yaml -nt ${qc} ]; then
            if [ ${method} = supernet ]; then
                ${compose} --search_run --out ${qexp}/search/train_config.yaml
                timer="${qtime} search --resumable ${qexp}/search --" train_asr mpq_plugins.bin.asr_train ${qexp}/search/train_config.yaml \
                    ${qexp}/search --init_param ${float_model} --seed ${seed}
            fi
            ${qtime} search --resumable ${qexp}/bits.yaml.d -- python -m mpq_plugins.bin.search_precision --quant_conf ${qc} \
                --asr_train_config ${asr_exp}/config.yaml --asr_model_file ${float_model} \
                --data ${datadir}/${valid_set} --supernet_dir ${qexp}/search --out ${qexp}/bits.yaml \
                --cache_dir ${asr_exp}/sensitivities
        fi
        ${compose} --bits ${qexp}/bits.yaml --out ${qexp}/train_config.yaml
        trained ${qexp} || timer="${qtime} train --resumable ${qexp} --" train_asr mpq_plugins.bin.asr_train ${qexp}/train_config.yaml \
            ${qexp} --init_param ${float_model} --seed ${seed};;
    all_in_one)
        local s systems sexp texp twins=$(twins_of ${qc} ${seed})
        ${compose} --out ${qexp}/train_config.yaml
        systems=$(python -m mpq_plugins.bin.export_nested --config ${qexp}/train_config.yaml \
            --token_list ${token_dir}/tokens.txt --list) || exit 1
        if [ ${twins} != ${qexp} ]; then   # twins_from: the other conf's twins, as this conf would train them
            for s in ${systems}; do
                texp=${twins}_${s}_twin
                ${compose} --aio_system ${s} --out ${qexp}/twins/${s}_train_config.yaml
                if ! { trained ${texp} && [ -f ${texp}/system.yaml ]; }; then
                    echo "$0: ${qc}: twins_from $(twins_from ${qc}): its twin ${texp} is not trained (run stage 6" \
                        "with --quant_confs $(dirname ${qc})/$(twins_from ${qc}) --seeds ${seed} first)" >&2; exit 1
                elif ! cmp -s <(sed '/^#/d' ${qexp}/twins/${s}_train_config.yaml) <(sed '/^#/d' ${texp}/train_config.yaml); then
                    echo "$0: ${qc}: twins_from $(twins_from ${qc}): its twin ${texp} was trained with another config" \
                        "than this conf gives it (diff ${qexp}/twins/${s}_train_config.yaml ${texp}/train_config.yaml)" >&2
                    exit 1
                fi
            done
        fi
        trained ${qexp} || timer="${qtime} train --resumable ${qexp} --" train_asr mpq_plugins.bin.asr_train \
            ${qexp}/train_config.yaml ${qexp} --init_param ${float_model} --seed ${seed}
        for s in ${systems}; do
            sexp=${qexp}_${s} texp=${twins}_${s}_twin
            python -m mpq_plugins.bin.export_nested --config ${qexp}/config.yaml --model ${qexp}/${inference_model} \
                --system ${s} --out_dir ${sexp}
            pack ${sexp} "python -m mpq_plugins.bin.timed --log ${sexp}/compression_time.json --what pack --"
            if [ ${twins} = ${qexp} ]; then
                # its twin: the same depth, width and bits fine-tuned alone from the float model cut to that shape
                python -m mpq_plugins.bin.export_nested --float --config ${asr_exp}/config.yaml --model ${float_model} \
                    --aio_config ${qexp}/config.yaml --system ${s} --out_dir ${texp}/init
                ${compose} --aio_system ${s} --out ${texp}/train_config.yaml
                trained ${texp} || timer="python -m mpq_plugins.bin.timed --log ${texp}/compression_time.json --what train
                    --resumable ${texp} --" train_asr mpq_plugins.bin.asr_train ${texp}/train_config.yaml ${texp} \
                    --init_param ${texp}/init/${inference_model} --seed ${seed}
                pack ${texp} "python -m mpq_plugins.bin.timed --log ${texp}/compression_time.json --what pack --"
                python -m mpq_plugins.bin.record_system --exp_dir ${texp} --quant_conf ${qc} --twin \
                    --source_checkpoint ${float_model}
            fi
            python -m mpq_plugins.bin.record_system --exp_dir ${sexp} --quant_conf ${qc} --source_checkpoint ${float_model} \
                --twin_system ${texp}
        done
        return;;
    *) echo "$0: ${qc}: method '${method}' is not one of float ptq qat one_stage supernet kl hessian all_in_one" >&2
       exit 1;;
    esac
    pack ${qexp} "${qtime} pack --"
    python -m mpq_plugins.bin.record_system --exp_dir ${qexp} --quant_conf ${qc} --source_checkpoint ${float_model}
}

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
    log 6 "quantize: pack ${asr_exp}; fine-tune from it and pack:${qconfs:- (no --quant_confs)}"
    pack ${asr_exp}
    python -m mpq_plugins.bin.record_system --exp_dir ${asr_exp} --source_checkpoint ${asr_exp}/${inference_model}
    for qc in ${qconfs}; do
        for seed in $(seeds_of ${qc}); do
            qexp=$(system_dir ${qc} ${seed})
            log 6 "quantize: ${qc} (seed ${seed}) -> ${qexp}/ (log: ${qexp}/train.log)"
            quantize_system ${qc} ${qexp} ${seed}
        done
    done
fi

# the decodes: the main one, then the acoustic one; each in exp/<system>/decode_<conf name>_packed/<set>
decode_configs="${inference_config} ${acoustic_config}"
decode_name() { echo decode_$(basename $1 .yaml | sed "s/^decode_//")_packed; }
decode_names=""; for c in ${decode_configs}; do decode_names="${decode_names} $(decode_name ${c})"; done
[ ${stop_stage} -lt 7 ] || systems=$(all_systems | tr '\n' ' ')
if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ]; then
    case "${lm}" in
        rnn) lm_opts="--lm_train_config ${lm_exp}/config.yaml --lm_file ${lm_exp}/valid.loss.best.pth";;
        ngram) lm_opts="--word_lm_file ${lm_exp}/lm.json --arpa_file ${lm_exp}/lm.arpa --lexicon_file ${lm_exp}/words.txt";;
        none) lm_opts="";;
    esac
    for c in ${decode_configs}; do
        # the weights of the conf's tune: grid, chosen on ${valid_set} with the float32 model, for every system
        # (tuned again only when the options, the model, the LM or the set change; rewritten only when they change)
        tuned=${asr_exp}/$(decode_name ${c})/tuned_config.yaml
        log 7 "decode: the weights of ${c}, tuned on ${valid_set} with ${asr_exp}/packed.safetensors -> ${tuned}"
        python -m mpq_plugins.bin.tune_decoding --config ${c} --data ${datadir}/${valid_set} \
            --asr_train_config ${asr_exp}/config.yaml --asr_model_file ${asr_exp}/packed.safetensors \
            ${lm_opts} --out ${tuned}
        for sys in ${systems}; do
            for d in $(sets_of ${sys}); do
                log 7 "decode: ${d} with ${sys}/packed.safetensors ($(basename ${c})) in ${nj} jobs"
                ${root}/local/decode.sh --nj ${nj} --config ${tuned} --model ${sys}/packed.safetensors \
                    --asr_config ${sys}/config.yaml --data ${datadir}/${d} \
                    --args "${lm_opts} ${inference_args}" --output_dir ${sys}/$(decode_name ${c})/${d}
            done
        done
    done
fi

if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ]; then
    log 8 "score: sclite per system, decode and test set"
    for sys in ${systems}; do
        for dn in ${decode_names}; do
            for d in $(sets_of ${sys}); do
                python -m mpq_plugins.bin.score --data ${datadir}/${d} --decode_dir ${sys}/${dn}/${d}
            done
        done
    done
fi

if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 9 ]; then
    log 9 "report: MAPSSWE against the float32 system, RESULTS.md and results/*.png"
    python -m mpq_plugins.bin.results --baseline ${asr_exp} --systems "${systems#${asr_exp}}" \
        --main_set ${report_set} --valid_set ${valid_set} --decode "${decode_names# }" --out RESULTS.md
fi
log done "stages ${stage}-${stop_stage} finished"
