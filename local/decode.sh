#!/usr/bin/env bash
# Decode one data dir with mpq_plugins.bin.asr_inference (ESPnet's beam search, our strict model loader) in nj parallel jobs
# through ${decode_cmd}.
#   local/decode.sh --data data/test --output_dir exp/asr/decode/test --model M.pth --asr_config config.yaml \
#       --config conf/decode_asr.yaml [--nj 2] [--args "extra options, e.g. --word_lm_file F"]
# Writes <output_dir>/text (utt-id hypothesis), <output_dir>/logdir/ (per-job logs).
set -euo pipefail
data=""; output_dir=""; model=""; asr_config=""; config=""; nj=2; args=""
. "$(dirname "$0")/../utils/parse_options.sh"
for f in ${data}/wav.scp ${model} ${asr_config} ${config}; do
    [ -f "$f" ] || { echo "$0: missing file $f" >&2; exit 1; }
done
: ${decode_cmd:=run.pl}
export OMP_NUM_THREADS=1   # one thread per job: nj jobs share the cores
python -m mpq_plugins.bin.validate_data_dir --data ${data} >/dev/null
n=$(wc -l < ${data}/wav.scp); [ ${nj} -gt ${n} ] && nj=${n}
# up to date (a complete decode, newer than the model, config, data and every file the options name, e.g.
# the LM, with the same options): keep it
sig="${model} ${config} ${args}"
newer() { local f; for f in "$@"; do [ ! -f "${f}" ] || [ ${output_dir}/text -nt "${f}" ] || return 1; done; }
if [ -f ${output_dir}/text ] && [ "$(wc -l < ${output_dir}/text)" = "${n}" ] && [ "$(cat ${output_dir}/decode_args 2>/dev/null)" = "${sig}" ] \
        && newer ${model} ${config} ${data}/wav.scp ${args}; then
    echo "$0: ${output_dir}/text is up to date (${n} hypotheses); not decoding again"
    exit 0
fi
# the earlier text stays until the new one is complete (a failed decode leaves it as it was)
logdir=${output_dir}/logdir
rm -rf ${logdir} && mkdir -p ${logdir}
# contiguous split of the utterance ids into nj key files
awk -v nj=${nj} -v n=${n} -v d=${logdir} '{ j = int((NR - 1) * nj / n) + 1; print $1 > (d "/keys." j ".scp") }' ${data}/wav.scp
${decode_cmd} JOB=1:${nj} ${logdir}/asr_inference.JOB.log \
    python -m mpq_plugins.bin.asr_inference --ngpu 0 \
        --data_path_and_name_and_type ${data}/wav.scp,speech,sound --key_file ${logdir}/keys.JOB.scp \
        --asr_train_config ${asr_config} --asr_model_file ${model} \
        --config ${config} --output_dir ${logdir}/output.JOB ${args}
cat ${logdir}/output.*/1best_recog/text | sort > ${output_dir}/text.tmp
mv ${output_dir}/text.tmp ${output_dir}/text
echo "${sig}" > ${output_dir}/decode_args
echo "$0: $(wc -l < ${output_dir}/text) hypotheses in ${output_dir}/text"
