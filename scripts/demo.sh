#!/usr/bin/env bash
# The main job: zoobank privilege-separated by pspy, a short workload over its
# HTTP API, then what `pspy analyze` says each principal can touch. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
PSPY_EXTRAS=example . scripts/setup.sh

JAIL="${JAIL:-/var/tmp/pspy-zoobank-jail}"
export ZOOBANK_PORT="${ZOOBANK_PORT:-8080}"
PSPY=.venv/bin/pspy

$PSPY stop --jail "$JAIL" >/dev/null 2>&1 || true
$PSPY bootstrap examples/zoobank --jail "$JAIL" --detach
trap '$PSPY stop --jail "$JAIL"' EXIT

.venv/bin/python examples/zoobank/workload.py "http://127.0.0.1:$ZOOBANK_PORT"
echo
$PSPY status --jail "$JAIL"
echo
$PSPY analyze --jail "$JAIL"
