#!/usr/bin/env bash
# The suite's short form on the other current CPythons: the unit tests (no
# root needed) and zoobank bootstrapped in chroot and namespace mode, each
# version in a virtualenv of its own (.venv-3.12, .venv-3.13). The whole
# suite runs on the first one (scripts/test.sh, .venv).
#
# An interpreter is taken from PSPY_PYTHON_3_12 / PSPY_PYTHON_3_13 when set,
# else from pyenv's versions, else python3.12 / python3.13 on PATH. Debian 12
# ships neither: a version found nowhere is reported as not tested, and
# PSPY_REQUIRE_PYTHONS=1 makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS="${PSPY_OTHER_PYTHONS:-3.12 3.13}"

find_python() {
    local v=$1 var="PSPY_PYTHON_${1//./_}" root candidate
    if [ -n "${!var:-}" ]; then echo "${!var}"; return 0; fi
    root="${PYENV_ROOT:-}"
    [ -z "$root" ] && command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
    [ -z "$root" ] && [ -d "$HOME/.pyenv" ] && root="$HOME/.pyenv"
    if [ -n "$root" ]; then
        for candidate in $(ls -d "$root/versions/$v".* 2>/dev/null | sort -V -r); do
            if [ -x "$candidate/bin/python$v" ]; then echo "$candidate/bin/python$v"; return 0; fi
        done
    fi
    command -v "python$v" 2>/dev/null
}

status=0
ready="" tested="" missing=""
for v in $VERSIONS; do
    if ! python=$(find_python "$v"); then
        missing="$missing $v"
        echo "other-pythons: CPython $v not found (PSPY_PYTHON_${v//./_}, pyenv, python$v): not tested" >&2
        continue
    fi
    echo "other-pythons: CPython $v: $python"
    venv=".venv-$v"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # One at a time: each editable install builds the native helper in the tree.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
    bash scripts/test-tools.sh "$venv/bin/python"
    ready="$ready $v"
done

# The versions side by side (most of the time is spent waiting on processes),
# each with pytest folders of its own; their output is shown one after the other.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=""
for v in $ready; do
    (
        py=".venv-$v/bin/python"
        rc=0
        "$py" -m pytest -q -p no:cacheprovider --basetemp="$logs/tmp-$v-unit" -m "not root" tests || rc=1
        "$py" -m pytest -q -p no:cacheprovider --basetemp="$logs/tmp-$v-zoobank" tests/test_zoobank.py \
            -k "not rootless" || rc=1
        exit $rc
    ) >"$logs/$v.log" 2>&1 &
    pids="$pids $!"
done
set -- $pids
for v in $ready; do
    rc=0
    wait "$1" || rc=$?
    shift
    echo "other-pythons: CPython $v: the unit tests, then zoobank in chroot and namespace mode"
    cat "$logs/$v.log"
    if [ "$rc" -eq 0 ]; then tested="$tested $v"; else status=1; echo "other-pythons: CPython $v FAILED"; fi
done
# Each editable install rebuilt the tree's native helper in place: it is
# built for CPython's stable ABI (abi3), so the main virtualenv loads it too.
echo "other-pythons: passed on:${tested:- none}; not found:${missing:- none}"
if [ -n "$missing" ] && [ "${PSPY_REQUIRE_PYTHONS:-0}" = 1 ]; then status=1; fi
exit $status
