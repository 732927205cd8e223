# Sourced by every recipe script: puts the project's virtual environment and SCTK on PATH.
MPQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MPQ_ROOT
export PATH="${MPQ_ROOT}/tools/venv/bin:${MPQ_ROOT}/utils:/usr/lib/sctk/bin:${PATH}"
# tools/pystartup/sitecustomize.py turns typeguard's import-time instrumentation of ESPnet off (ESPnet imports
# in 8 s instead of 18 s here); MPQ_TYPECHECK=1 keeps the checks.
export PYTHONPATH="${MPQ_ROOT}/tools/pystartup:${MPQ_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
# Offline and quiet: ESPnet's g2p_en looks for nltk data at import and would try to download it.
export NLTK_DATA="${MPQ_ROOT}/tools/nltk_data"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONWARNINGS="ignore"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
export LC_ALL=C
