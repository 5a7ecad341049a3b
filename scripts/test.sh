#!/usr/bin/env bash
# The whole test suite. As root (as in CI) nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PSPY_EXTRAS=test . scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
