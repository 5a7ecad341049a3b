#!/usr/bin/env bash
# zoobank under pspy in a default Docker container (`docker run` with
# Docker's default capabilities and seccomp profile), and what happens:
#   1. chroot mode: bootstrap, the workload, web trying to open Bank's
#      database, Bank's log (the keyring warning);
#   2. namespace mode, same container: the error, naming the step and what
#      the container must allow;
#   3. namespace mode in a container given what that error asks for.
# Needs root. Installs docker.io and debootstrap if missing, starts a
# private dockerd if none answers (no bridge, no iptables: the containers
# run with --network none) and stops it at the end. The image is Debian 12
# from this host's own apt mirror (debootstrap, kept in the work folder),
# with pspy and zoobank's needs installed from wheels built here.
# Not part of CI (too heavy): tests/test_container_steps.py emulates the
# same container with the real kernel.
#   PSPY_CONTAINER_WORK=DIR   work folder (default /var/tmp/pspy-in-container)
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${PSPY_CONTAINER_WORK:-/var/tmp/pspy-in-container}
SUITE=bookworm
BASE=pspy-debian12:base
IMAGE=pspy-zoobank:local

log() { printf '\n== %s\n' "$*"; }
die() { printf 'in-container.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (dockerd, debootstrap)"
[ -x .venv/bin/python ] || die "no .venv here: run 'PSPY_EXTRAS=example bash scripts/setup.sh' first"

missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    log "installing$missing"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
mkdir -p "$WORK"

# ---------------------------------------------------------------- the daemon
STARTED=""
stop_daemon() {
    if [ -n "$STARTED" ]; then
        kill "$STARTED" 2>/dev/null || true
        wait "$STARTED" 2>/dev/null || true
    fi
}
trap stop_daemon EXIT
if ! docker info >/dev/null 2>&1; then
    export DOCKER_HOST="unix://$WORK/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        log "starting a private dockerd (log: $WORK/dockerd.log)"
        dockerd --iptables=false --ip6tables=false --bridge=none --host "$DOCKER_HOST" \
            --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
            >"$WORK/dockerd.log" 2>&1 &
        STARTED=$!
        for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
        docker info >/dev/null 2>&1 || { tail -n 20 "$WORK/dockerd.log"; die "dockerd did not start"; }
    fi
fi

# ---------------------------------------------------------------- the image
# The mirror for Debian 12, as this host's apt has it (sources.list or deb822).
host_mirror() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s { print $1; exit }'
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ ! -f "$WORK/rootfs.tar" ]; then
        mirror=$(host_mirror)
        [ -n "$mirror" ] || die "no '$SUITE' suite in this host's apt sources (apt-get indextargets)"
        log "debootstrap $SUITE from $mirror (a minute or two)"
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,libseccomp2 "$SUITE" "$WORK/rootfs" \
            "$mirror" >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
        tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar.part" . && mv "$WORK/rootfs.tar.part" "$WORK/rootfs.tar"
        rm -rf "$WORK/rootfs"
    fi
    log "docker import $WORK/rootfs.tar as $BASE"
    docker import "$WORK/rootfs.tar" "$BASE" >/dev/null
fi

log "building $IMAGE: pspy and zoobank's needs from wheels built here"
CONTEXT="$WORK/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/wheels"
.venv/bin/python -m pip wheel -q --disable-pip-version-check -w "$CONTEXT/wheels" ".[example]" \
    >"$WORK/wheels.log" 2>&1 || { tail -n 20 "$WORK/wheels.log"; die "building the wheels failed"; }
cp -r examples/zoobank "$CONTEXT/zoobank"
rm -rf "$CONTEXT/zoobank/__pycache__"
cat >"$CONTEXT/run.sh" <<'EOF'
#!/bin/sh
# In the container: what it was given, then zoobank under pspy in the mode(s) asked.
set -u
echo "container: uid $(id -u), $(grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | tr '\t\n' '  ')"
for mode in "$@"; do
    if [ "$mode" = chroot ]; then
        echo "--- chroot mode: pspy bootstrap /src/zoobank --jail /jail --detach"
        pspy bootstrap /src/zoobank --jail /jail --detach || { echo "exit status $?"; continue; }
        python3 /src/zoobank/workload.py http://127.0.0.1:8080
        echo "--- web opening Bank's database:"
        pspy exec --jail /jail web -- python -c 'open("db/bank/bank.db")' 2>&1 | tail -n 1
        echo "--- Bank's log:"
        head -n 3 /jail/.pspy/logs/Bank.log
        pspy stop --jail /jail
    else
        echo "--- namespace mode: pspy bootstrap /src/zoobank --jail /jail-ns --namespaces --detach"
        if pspy bootstrap /src/zoobank --jail /jail-ns --namespaces --detach; then
            python3 /src/zoobank/workload.py http://127.0.0.1:8080
            echo "--- web opening Bank's database:"
            pspy exec --jail /jail-ns web -- python -c 'open("db/bank/bank.db")' 2>&1 | tail -n 1
            pspy stop --jail /jail-ns
        else
            echo "exit status $?"
        fi
    fi
done
EOF
chmod 755 "$CONTEXT/run.sh"
cat >"$CONTEXT/Dockerfile" <<EOF
FROM $BASE
COPY wheels /wheels
RUN python3 -m venv /opt/pspy && /opt/pspy/bin/pip install -q --no-index --find-links /wheels 'pspy-privsep[example]'
COPY zoobank /src/zoobank
COPY run.sh /run.sh
ENV PATH=/opt/pspy/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
EOF
DOCKER_BUILDKIT=0 docker build --network none -t "$IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 ||
    { tail -n 20 "$WORK/build.log"; die "docker build failed"; }

log "docker run --rm --network none $IMAGE: Docker's default capabilities and seccomp profile"
docker run --rm --network none "$IMAGE" /run.sh chroot namespaces

ALLOW="--cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined"
log "docker run --rm --network none $ALLOW $IMAGE: what namespace mode's error asks for"
# shellcheck disable=SC2086
docker run --rm --network none $ALLOW "$IMAGE" /run.sh namespaces
