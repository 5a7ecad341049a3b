#!/usr/bin/env bash
# The whole test suite. As root (as in CI) nothing is skipped.
# With no arguments it also runs the suite's short form on the other current
# CPythons (scripts/other-pythons.sh; PSPY_OTHER_PYTHONS="" skips them).
# Arguments go to pytest, for the main interpreter only.
set -euo pipefail
cd "$(dirname "$0")/.."
PSPY_EXTRAS=test . scripts/setup.sh
status=0
# The slowest tests are listed: the whole run must stay under 30 minutes.
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@" || status=$?
if [ $# -eq 0 ] && [ -n "${PSPY_OTHER_PYTHONS-3.12 3.13}" ]; then
    bash scripts/other-pythons.sh || status=1
fi
exit $status
