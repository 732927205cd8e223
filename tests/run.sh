#!/usr/bin/env bash
# The test command: set up what is missing (tools/setup.sh), then run the whole test suite.
#   tests/run.sh [pytest options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"${root}/tools/setup.sh"
. "${root}/path.sh"
cd "${root}"
# one thread a process: the workers and the recipe processes they start share the cores (path.sh would give
# each of them every core, and their threads then wait on each other)
export OMP_NUM_THREADS="${MPQ_TEST_THREADS:-1}"
exec python -m pytest -q -p no:cacheprovider -n "${MPQ_TEST_JOBS:-2}" --dist loadfile --no-loadscope-reorder tests "$@"
