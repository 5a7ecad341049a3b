# Sourced by demo.sh and test.sh: installs what a fresh Debian 12 machine lacks,
# then a virtualenv in .venv with pspy and the given extras. Idempotent.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
# libcap-dev: python-prctl builds against it; libseccomp-dev and gcc: the native
# helper; python3-dev/venv: headers and venv for Debian's own python3.
APT_PACKAGES="gcc libcap-dev libseccomp-dev python3-dev python3-venv"
# graphviz and vagrant: the tests render pspy analyze --format dot, and
# validate vagrant/Vagrantfile; golang-github-containers-common (Debian 12's
# name for containers-common): Podman's default seccomp profile, which the
# tests load as a principal's.
case ",${PSPY_EXTRAS:-test}," in
    *,test,*) APT_PACKAGES="$APT_PACKAGES graphviz vagrant golang-github-containers-common" ;;
esac
# systemd and systemd-container: the tests check exported units with
# systemd-analyze and run them under a systemd that systemd-nspawn boots.
case ",${PSPY_EXTRAS:-test}," in *,test,*) APT_PACKAGES="$APT_PACKAGES systemd systemd-container" ;; esac
# runc: the tests run the pod pspy export kubernetes writes, each container
# with the OCI runtime that containerd and CRI-O run containers with.
case ",${PSPY_EXTRAS:-test}," in *,test,*) APT_PACKAGES="$APT_PACKAGES runc" ;; esac

missing=""
for pkg in $APT_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages:$missing (run as root, or install them)" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${PSPY_EXTRAS:-test}]"
# kubernetes-validate (the Kubernetes schemas, 17,000 files) goes into a
# folder of its own that only the tests put on their path: chroot mode copies
# the interpreter's site-packages into every jail, and the suite makes many.
case ",${PSPY_EXTRAS:-test}," in
    *,test,*) bash scripts/test-tools.sh .venv/bin/python ;;
esac
