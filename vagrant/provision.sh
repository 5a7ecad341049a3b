#!/usr/bin/env bash
# Run pspy's test suite in the VM, as root, with the README's test command.
# The synced checkout is copied to a folder of the VM's own first: the
# suite's set-up writes a virtualenv and builds the native helper in the
# tree, which must not land in the host's checkout.
set -euo pipefail
SRC=/pspy-src
WORK=/root/pspy
rm -rf "$WORK"
cp -a "$SRC" "$WORK"
cd "$WORK"
# PSPY_TEST_ARGS (from the Vagrantfile): pytest arguments, split on spaces.
# shellcheck disable=SC2086
exec bash scripts/test.sh ${PSPY_TEST_ARGS:-}
