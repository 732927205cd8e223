#!/usr/bin/env bash
# Set up mpq-asr on this machine; idempotent, so every entry point may call it.
#   tools/setup.sh          # Debian tools (when apt is there) + tools/venv with tools/requirements.txt
# Prints what it installs; a run with nothing missing is silent and takes a few seconds.
set -euo pipefail
tools=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
did=""   # what this run installed

# 1. Debian packages: SCTK (sclite, sc_stats), sox, the TTS engines and voices, the text sources.
debs="sctk sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts wordnet-base fortunes"
missing=""
for p in ${debs}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="${missing} $p"
done
if [ -n "${missing}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages:${missing}"; did="${did} debs"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing} >/dev/null
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
        echo "setup: installing Debian packages with sudo:${missing}"; did="${did} debs"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing} >/dev/null
    else
        echo "setup: these Debian packages are missing and apt-get cannot be used here:${missing}" >&2
        echo "setup: install them (or their equivalents: sclite/sc_stats, sox, espeak-ng, flite, festival voices," >&2
        echo "       WordNet and fortune files) and run tools/setup.sh again" >&2
        exit 1
    fi
fi

# 2. The virtual environment, rebuilt only when tools/requirements.txt changes.
stamp=${tools}/venv/.requirements.sha256
want=$(sha256sum ${tools}/requirements.txt | cut -d' ' -f1)
if [ ! -x ${tools}/venv/bin/python ] || [ "$(cat ${stamp} 2>/dev/null)" != "${want}" ]; then
    echo "setup: installing Python packages into ${tools}/venv (torch and espnet: a few minutes)"; did="${did} venv"
    python3 -m venv ${tools}/venv
    if ! ${tools}/venv/bin/pip install -q --disable-pip-version-check -r ${tools}/requirements.txt \
            > ${tools}/pip-install.log 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" ${tools}/pip-install.log | tail -20 >&2
        echo "setup: pip install failed (full log: ${tools}/pip-install.log)" >&2
        exit 1
    fi
    ${tools}/venv/bin/python -c "import espnet2.tasks.asr" >/dev/null 2>&1 || true  # byte-compile once
    ${tools}/venv/bin/python -c "import torch, torchaudio, espnet, sentencepiece, kaldiio, yaml" \
        || { echo "setup: the virtual environment ${tools}/venv is broken; delete it and run again" >&2; exit 1; }
    echo "${want}" > ${stamp}   # written only once the packages import: a stamped venv was checked
fi

# 3. Offline: empty nltk archives so that ESPnet's g2p_en import does not try to download them.
${tools}/venv/bin/python ${tools}/make_nltk_placeholders.py ${tools}/nltk_data
[ -z "${did}" ] || echo "setup: installed${did} in $(( $(date +%s) - t0 )) s"
