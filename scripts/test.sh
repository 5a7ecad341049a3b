#!/usr/bin/env bash
# The whole test suite. As root (as in CI) nothing is skipped.
# With no arguments it also runs the suite's short form on the other current
# CPythons (scripts/other-pythons.sh; PSPY_OTHER_PYTHONS="" skips them).
# Arguments go to pytest, for the main interpreter only.
set -euo pipefail
cd "$(dirname "$0")/.."
PSPY_EXTRAS=test . scripts/setup.sh
status=0
pytest_args=()
# As root, the tests' folders (and so their jails) live on a tmpfs of the
# run's own, with one runtime store for all its chroot jails: the suite
# builds about 150 jails, and creating and removing their files on a disk
# took a third of the run. PSPY_TESTS_ON_DISK=1 keeps them on the disk.
if [ "$(id -u)" -eq 0 ] && [ -z "${PSPY_TESTS_ON_DISK:-}" ]; then
    for old in /var/lib/pspy-tests.*; do   # left by a run that was killed
        [ -d "$old" ] && [ ! -e "/proc/${old##*.}" ] || continue
        umount -l "$old" 2>/dev/null || true
        rmdir "$old" 2>/dev/null || true
    done
    tests_tmp="/var/lib/pspy-tests.$$"
    mkdir -m 0755 "$tests_tmp"
    mount -t tmpfs -o mode=0755,size=12g pspy-tests "$tests_tmp"
    trap 'umount -l "$tests_tmp"; rmdir "$tests_tmp"' EXIT
    export PSPY_RUNTIME_STORE="$tests_tmp/runtime-store"
    pytest_args+=(--basetemp="$tests_tmp/pytest")
fi
# The slowest tests are listed: the whole run must stay under 30 minutes.
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "${pytest_args[@]}" "$@" || status=$?
if [ $# -eq 0 ] && [ -n "${PSPY_OTHER_PYTHONS-3.12 3.13}" ]; then
    bash scripts/other-pythons.sh || status=1
fi
exit $status
