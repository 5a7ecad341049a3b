#!/usr/bin/env bash
# Test-only tools that no principal needs, installed beside a virtualenv
# (VENV-tools) rather than in its site-packages, which chroot mode copies
# into every jail. tests/conftest.py puts the folder on the path.
# Usage: scripts/test-tools.sh VENV/bin/python
set -euo pipefail
python=$1
target="$(dirname "$(dirname "$python")")-tools"
want="kubernetes-validate>=1.37"
if [ ! -f "$target/.installed" ] || [ "$(cat "$target/.installed")" != "$want" ]; then
    rm -rf "$target"
    "$python" -m pip install -q --disable-pip-version-check --target "$target" "$want"
    echo "$want" > "$target/.installed"
fi
