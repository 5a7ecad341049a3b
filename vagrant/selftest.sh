#!/usr/bin/env bash
# Proves vagrant/ on this machine: boots its Debian 12 VM with `vagrant up
# --provider=libvirt` and lets the provisioning run the whole test suite.
#
# Needs root on a Debian 12 host with /dev/kvm. Nothing is fetched but Debian
# packages (and, in the VM, what the suite's set-up fetches): the box is built
# here with debootstrap, from the mirror this host's apt uses. The VM gets the
# host's apt sources and settings, /etc/pip.conf and the CA bundle it names,
# so it reaches the same package registries the host does.
#
#   sudo vagrant/selftest.sh                 # build box, vagrant up, clean up
#   sudo vagrant/selftest.sh --reprovision   # then also: `vagrant provision`
#                                            # syncs the tree again (suite runs twice)
#   sudo vagrant/selftest.sh --keep          # leave the VM up; prints how to clean up
#   sudo vagrant/selftest.sh --box-cache DIR # keep/reuse the built box in DIR
#   sudo vagrant/selftest.sh --accel tcg     # kvm, tcg or auto (the default:
#                                            # kvm if it boots the box's kernel)
#   sudo vagrant/selftest.sh --cleanup WORKDIR   # clean up after --keep
#   sudo vagrant/selftest.sh --tests "tests/test_zoobank.py"
#                                            # part of the suite (PSPY_TEST_ARGS)
#   sudo vagrant/selftest.sh --bake-packages # the Debian packages the test
#                                            # command's set-up installs are in
#                                            # the box already (saves its apt step)
#
# The checkout is copied to a work folder first, so that no .vagrant folder
# or marker file lands in it; vagrant's state (VAGRANT_HOME) lives there too.
# Exit status: vagrant up's (then vagrant provision's, with --reprovision).
set -euo pipefail
{ # parsed whole before it runs, so editing this file during a run is harmless

BOX_NAME=pspy-selftest-bookworm
BOX_FILE=$BOX_NAME.box
DISK_GB=20
SUITE=bookworm
MARKER=.pspy-selftest-resync-marker
VAGRANT_PUB_GLOB='/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub'
HOST_PACKAGES="debootstrap qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
  dnsmasq-base iptables vagrant vagrant-libvirt rsync e2fsprogs"
GUEST_PACKAGES="linux-image-amd64,openssh-server,sudo,rsync,ca-certificates,systemd-sysv,
  ifupdown,isc-dhcp-client,iproute2,netbase,initramfs-tools"

REPO=$(cd "$(dirname "$0")/.." && pwd)
# The Debian packages the test command's set-up installs (scripts/setup.sh's
# APT_PACKAGES, the test extras' included), read from it rather than copied.
setup_packages() {
    grep -o 'APT_PACKAGES="[^"]*"' "$REPO/scripts/setup.sh" | sed 's/^APT_PACKAGES="//; s/"$//; s/\$APT_PACKAGES//g' |
        tr -s ' \n' ' '
}
KEEP=0 REPROVISION=0 BOX_CACHE="" CLEANUP_ONLY="" ACCEL=auto TESTS="" BAKE=0

usage() { sed -n '2,29s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --reprovision) REPROVISION=1 ;;
        --tests) TESTS=${2:?--tests needs pytest arguments}; shift ;;
        --bake-packages) BAKE=1 ;;
        --accel) ACCEL=${2:?--accel needs kvm, tcg or auto}; shift ;;
        --box-cache) BOX_CACHE=$(realpath -m "${2:?--box-cache needs a folder}"); shift ;;
        --cleanup) CLEANUP_ONLY=$(realpath "${2:?--cleanup needs the work folder}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "selftest: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "selftest: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, libvirt)"
if [ "$BAKE" = 1 ]; then
    BAKED=$(setup_packages)
    [ -n "$BAKED" ] || die "no APT_PACKAGES found in scripts/setup.sh"
    GUEST_PACKAGES="$GUEST_PACKAGES,$(echo $BAKED | tr ' ' ',')"
    BOX_FILE=$BOX_NAME-baked.box
fi

# ---------------------------------------------------------------- clean-up
# What this run created is written to $WORK/state as it goes, so that the
# clean-up (at exit, or later with --cleanup after --keep) removes exactly that.
state() { printf '%s=%q\n' "$1" "$2" >>"$WORK/state"; eval "$1=\$2"; }

vagrant_env() {
    export VAGRANT_HOME="$WORK/vagrant.d" VAGRANT_CHECKPOINT_DISABLE=1 \
        VAGRANT_DEFAULT_PROVIDER=libvirt LIBVIRT_DEFAULT_URI=qemu:///system PSPY_BOX=$BOX_NAME \
        PSPY_TEST_ARGS="$TESTS"
}

cleanup() {
    set +e
    # shellcheck disable=SC1091
    . "$WORK/state"
    vagrant_env
    if [ -d "$WORK/src/vagrant" ] && [ -n "${BOX_ADDED:-}" ]; then
        log "destroying the VM"
        (cd "$WORK/src/vagrant" && vagrant destroy -f)
        vagrant box remove --force --all "$BOX_NAME" >/dev/null 2>&1
    fi
    if [ -n "${PREFIX:-}" ] && virsh version >/dev/null 2>&1; then
        for dom in $(virsh list --all --name | grep "^$PREFIX"); do
            virsh destroy "$dom" >/dev/null 2>&1
            virsh undefine "$dom" >/dev/null
        done
        if [ -n "${POOL:-}" ] && virsh pool-info "$POOL" >/dev/null 2>&1; then
            for vol in $(virsh vol-list "$POOL" | awk 'NR > 2 && NF { print $1 }'); do
                virsh vol-delete --pool "$POOL" "$vol" >/dev/null
            done
            virsh pool-destroy "$POOL" >/dev/null
            virsh pool-undefine "$POOL" >/dev/null
        fi
        # Networks this run brought up (vagrant-libvirt's, or autostarted by the
        # libvirtd it started) go down; those it defined are undefined.
        for net in $([ -n "${NETS_DEFINED_BEFORE+set}" ] && virsh net-list --name); do
            case " ${NETS_ACTIVE_BEFORE:-} " in *" $net "*) continue ;; esac
            virsh net-destroy "$net" >/dev/null && echo "stopped libvirt network $net"
        done
        for net in $([ -n "${NETS_DEFINED_BEFORE+set}" ] && virsh net-list --all --name); do
            case " ${NETS_DEFINED_BEFORE:-} " in *" $net "*) continue ;; esac
            virsh net-undefine "$net" >/dev/null && echo "removed libvirt network $net"
        done
    fi
    # Only the daemons this run started, by their pid.
    for pid in ${STARTED_PIDS:-}; do kill "$pid" 2>/dev/null && echo "stopped daemon pid $pid"; done
    [ -n "${STARTED_UNITS:-}" ] && systemctl stop $STARTED_UNITS
    rm -rf "$WORK"
}

if [ -n "$CLEANUP_ONLY" ]; then
    [ -f "$CLEANUP_ONLY/state" ] || die "$CLEANUP_ONLY is not a work folder of this script"
    WORK=$CLEANUP_ONLY
    cleanup
    exit 0
fi

START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/pspy-selftest.XXXXXX")
chmod 755 "$WORK"   # libvirt's qemu user reads the box's kernel and disk below it
: >"$WORK/state"
state PREFIX "pspy-selftest-${WORK##*.}-"
state POOL "pspy-selftest-${WORK##*.}"

on_exit() {
    local rc=$?
    if [ "$KEEP" = 1 ]; then
        echo
        echo "--keep: the VM is still up. To look at it:"
        echo "  cd $WORK/src/vagrant && VAGRANT_HOME=$WORK/vagrant.d PSPY_BOX=$BOX_NAME vagrant ssh"
        echo "To remove everything this run made:  $0 --cleanup $WORK"
    else
        cleanup
    fi
    echo "selftest: exit $rc after $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- host packages
missing=""
for pkg in $HOST_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
if [ -n "$missing" ]; then
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -c /dev/kvm ] || die "/dev/kvm is missing: the VM needs KVM"

# ---------------------------------------------------------------- the box
# The mirror for Debian 12, as this host's apt has it (sources.list or deb822).
host_mirror() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s { print $1; exit }'
}

# Copies a host file into the root file system at the same path, if it exists.
copy_in() {
    local f
    for f in "$@"; do
        if [ ! -e "$f" ]; then continue; fi
        mkdir -p "$ROOTFS$(dirname "$f")"
        cp -aL "$f" "$ROOTFS$f"
    done
}

build_box() {
    local out=$1 mirror pub f cert kernel initrd
    ROOTFS=$WORK/rootfs
    mirror=$(host_mirror)
    [ -n "$mirror" ] || die "no '$SUITE' suite in this host's apt sources (apt-get indextargets)"
    log "debootstrap $SUITE from $mirror (takes a while)"
    # apt's proxy setting, if the host has one, serves debootstrap too.
    local proxy
    proxy=$(apt-config shell P Acquire::http::Proxy | sed -n "s/^P='\(.*\)'$/\1/p")
    http_proxy=${proxy:-${http_proxy:-}} debootstrap --arch=amd64 \
        --include="$(echo $GUEST_PACKAGES | tr -d ' ')" "$SUITE" "$ROOTFS" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log"; die "debootstrap failed"; }

    log "configuring the box's system"
    echo "/dev/vda / ext4 errors=remount-ro 0 1" >"$ROOTFS/etc/fstab"
    echo "$BOX_NAME" >"$ROOTFS/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$BOX_NAME" >"$ROOTFS/etc/hosts"
    # Interfaces are eth* (net.ifnames=0 on the kernel's command line).
    cat >"$ROOTFS/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
EOF
    : >"$ROOTFS/etc/machine-id"   # a fresh one at first boot
    rm -f "$ROOTFS/var/lib/dbus/machine-id"

    # The registries, reached as the host reaches them: its apt sources, keys and
    # settings (proxy, validity checks), its pip configuration and CA certificates.
    rm -f "$ROOTFS/etc/apt/sources.list" "$ROOTFS"/etc/apt/sources.list.d/*
    copy_in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
    copy_in /etc/apt/trusted.gpg /etc/apt/trusted.gpg.d/* /etc/apt/keyrings/* /etc/apt/auth.conf /etc/apt/auth.conf.d/*
    for f in $(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
               grep -oiE '(signed-by[:=] *)/[^] ]+' | sed -E 's/^[^/]*//'); do
        if [ ! -e "$ROOTFS$f" ]; then copy_in "$f"; fi
    done
    for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
        if [ -f "$f" ] && grep -q '^[[:space:]]*Acquire' "$f"; then copy_in "$f"; fi
    done
    copy_in /etc/pip.conf /usr/local/share/ca-certificates/*
    chroot "$ROOTFS" update-ca-certificates >/dev/null
    if [ -f /etc/pip.conf ]; then
        cert=$(sed -nE 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1/p' /etc/pip.conf | tail -n 1)
        if [ -n "$cert" ]; then copy_in "$cert"; fi
    fi

    # The vagrant user: password-less sudo, vagrant's insecure key (replaced at first up).
    pub=$(ls $VAGRANT_PUB_GLOB 2>/dev/null | tail -n 1)
    [ -n "$pub" ] || die "vagrant's insecure public key ($VAGRANT_PUB_GLOB) is missing"
    chroot "$ROOTFS" useradd --create-home --shell /bin/bash vagrant
    echo "vagrant ALL=(ALL) NOPASSWD: ALL" >"$ROOTFS/etc/sudoers.d/vagrant"
    chmod 440 "$ROOTFS/etc/sudoers.d/vagrant"
    install -d -m 700 "$ROOTFS/home/vagrant/.ssh"
    install -m 600 "$pub" "$ROOTFS/home/vagrant/.ssh/authorized_keys"
    chroot "$ROOTFS" chown -R vagrant:vagrant /home/vagrant/.ssh
    chroot "$ROOTFS" apt-get clean

    # Direct kernel boot: the kernel and initrd travel in the box, beside the disk.
    local box=$WORK/box
    mkdir -p "$box"
    kernel=$(ls "$ROOTFS"/boot/vmlinuz-* | sort -V | tail -n 1)
    initrd=$(ls "$ROOTFS"/boot/initrd.img-* | sort -V | tail -n 1)
    [ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initrd in the box's /boot"
    cp "$kernel" "$box/vmlinuz"
    cp "$initrd" "$box/initrd.img"

    log "making the ${DISK_GB}G disk image"
    if grep -q " $ROOTFS/" /proc/mounts; then die "something is still mounted below $ROOTFS"; fi
    truncate -s "${DISK_GB}G" "$WORK/root.raw"
    mke2fs -q -t ext4 -L root -d "$ROOTFS" "$WORK/root.raw"
    rm -rf "$ROOTFS"
    qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$box/box.img"
    rm -f "$WORK/root.raw"

    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$DISK_GB" >"$box/metadata.json"
    cat >"$box/Vagrantfile" <<'EOF'
# Debian 12 built by pspy's vagrant/selftest.sh; boots its kernel directly.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.expand_path("vmlinuz", __dir__)
    lv.initrd = File.expand_path("initrd.img", __dir__)
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0"
  end
end
EOF
    mkdir -p "$(dirname "$out")"
    tar -cf "$out.part" -C "$box" metadata.json Vagrantfile vmlinuz initrd.img box.img
    mv "$out.part" "$out"
    rm -rf "$box"
}

if [ -n "$BOX_CACHE" ] && [ -f "$BOX_CACHE/$BOX_FILE" ]; then
    log "using the box built before: $BOX_CACHE/$BOX_FILE"
    BOX_PATH=$BOX_CACHE/$BOX_FILE
else
    BOX_PATH=${BOX_CACHE:-$WORK}/$BOX_FILE
    build_box "$BOX_PATH"
fi

# ---------------------------------------------------------------- KVM or not
# Some hosts' /dev/kvm cannot run a stock kernel (e.g. PVM, a nested KVM that
# needs guests built for it): boot the box's kernel briefly and see whether it
# prints its banner. If not, the VM runs on QEMU's emulation (TCG): slower.
kvm_boots_the_kernel() {
    tar -xOf "$BOX_PATH" vmlinuz >"$WORK/probe-vmlinuz"
    # (in a subshell: its "Aborted" notice, when QEMU aborts, goes nowhere)
    (timeout 60 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -no-reboot \
        -serial "file:$WORK/probe.log" -kernel "$WORK/probe-vmlinuz" \
        -append "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1" >"$WORK/probe.err" 2>&1) 2>/dev/null || true
    grep -q "Linux version" "$WORK/probe.log" 2>/dev/null
}
case "$ACCEL" in
    kvm|tcg) ;;
    auto)
        if kvm_boots_the_kernel; then ACCEL=kvm; else
            ACCEL=tcg
            log "KVM here does not boot Debian's kernel; the VM runs on QEMU's emulation (TCG), slowly"
            sed -n '1,3p' "$WORK/probe.err"
        fi ;;
    *) die "--accel: kvm, tcg or auto, not $ACCEL" ;;
esac
[ "$ACCEL" = tcg ] && DRIVER=qemu || DRIVER=kvm

# ---------------------------------------------------------------- libvirt
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    log "starting libvirt"
    if [ "$(ps -p 1 -o comm=)" = systemd ]; then
        systemctl start virtlogd libvirtd
        state STARTED_UNITS "libvirtd virtlogd"
    else
        # No systemd here: run the daemons directly, and stop them at the end.
        pids=""
        for daemon in virtlogd libvirtd; do
            if ! pgrep -x "$daemon" >/dev/null; then
                "/usr/sbin/$daemon" --daemon --pid-file "$WORK/$daemon.pid"
                for _ in $(seq 50); do if [ -s "$WORK/$daemon.pid" ]; then break; fi; sleep 0.2; done
                pids="$pids $(cat "$WORK/$daemon.pid")"
            fi
        done
        state STARTED_PIDS "$pids"
    fi
    for _ in $(seq 60); do if virsh -c qemu:///system version >/dev/null 2>&1; then break; fi; sleep 1; done
fi
export LIBVIRT_DEFAULT_URI=qemu:///system
virsh version >/dev/null || die "libvirtd does not answer"
state NETS_DEFINED_BEFORE "$(virsh net-list --all --name | xargs)"
# A libvirtd started here may autostart networks: those count as this run's.
before=""
if [ -z "${STARTED_PIDS:-}${STARTED_UNITS:-}" ]; then before=$(virsh net-list --name | xargs); fi
state NETS_ACTIVE_BEFORE "$before"
mkdir -p "$WORK/pool"
virsh pool-define-as "$POOL" dir --target "$WORK/pool" >/dev/null
virsh pool-start "$POOL" >/dev/null

# ---------------------------------------------------------------- vagrant up
log "copying the checkout to $WORK/src"
rsync -a --exclude=/.git/ --exclude=/.venv/ --exclude='/.venv-*/' --exclude=.vagrant/ --exclude=__pycache__/ "$REPO/" "$WORK/src/"
rm -f "$WORK/src/$MARKER"
vagrant_env
mkdir -p "$VAGRANT_HOME"
# This run's libvirt names and accelerator; the checkout's Vagrantfile is
# used as it is.
cat >"$VAGRANT_HOME/Vagrantfile" <<EOF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "$DRIVER"
    lv.default_prefix = "$PREFIX"
    lv.storage_pool_name = "$POOL"
  end
end
EOF
log "vagrant box add $BOX_NAME"
vagrant box add --name "$BOX_NAME" "$BOX_PATH" >/dev/null
state BOX_ADDED 1

cd "$WORK/src/vagrant"
# vagrant's upload progress is one long line of carriage returns: drop it.
progress_lines() { stdbuf -o0 tr '\r' '\n' | sed -u -E 's/\x1b\[K//g; s/^Progress: [0-9]+%(.)/\1/; /^Progress: [0-9]+%$/d'; }
log "vagrant up --provider=libvirt (the suite runs in the provisioning)"
set +e
vagrant up --provider=libvirt --no-color 2>&1 | progress_lines | tee "$WORK/up.log"
status=${PIPESTATUS[0]}
set -e

summary() {  # the VM's pytest summary: the provisioner's last lines
    sed -n 's/^ *default: //p' "$1" | tail -n 30
}
log "vagrant up exited with $status; the end of the provisioning's output:"
summary "$WORK/up.log"

if [ "$REPROVISION" = 1 ] && [ "$status" -eq 0 ]; then
    log "vagrant provision: does it sync the tree again? marker $MARKER added on the host"
    vagrant ssh -c "test ! -e /pspy-src/$MARKER" || die "the marker is in the VM before it was made"
    touch "$WORK/src/$MARKER"
    set +e
    vagrant provision --no-color 2>&1 | progress_lines | tee "$WORK/provision.log"
    status=${PIPESTATUS[0]}
    set -e
    log "vagrant provision exited with $status; the end of its output:"
    summary "$WORK/provision.log"
    if vagrant ssh -c "test -f /pspy-src/$MARKER"; then
        log "re-sync: yes, /pspy-src/$MARKER is in the VM after vagrant provision"
    else
        log "re-sync: NO, /pspy-src/$MARKER is not in the VM after vagrant provision"
        [ "$status" -ne 0 ] || status=1
    fi
fi
exit "$status"
}
