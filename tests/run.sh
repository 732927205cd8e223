#!/usr/bin/env bash
# The test command: set up what is missing (tools/setup.sh), then run the whole test suite.
#   tests/run.sh [pytest options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"${root}/tools/setup.sh"
. "${root}/path.sh"
cd "${root}"
exec python -m pytest -q -p no:cacheprovider -n "${MPQ_TEST_JOBS:-2}" --dist loadfile tests "$@"
