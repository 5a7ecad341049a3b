"""Profiles users already have: Docker's and Podman's own default profiles
load as a principal's, applied as Docker and Podman would apply them here
(entries of other architectures only there, capabilities a principal does
not hold, this kernel's version), with a warning for each field pspy does
not act on and an error for a syscall name no architecture has.

Docker's profile is the copy in tests/data/seccomp (see its README);
Podman's is the one Debian's containers-common package installs.
"""

import json
import os
import platform
import shutil

import pytest

from conftest import OUTCOME, REPO, probe, pspy, write_app
from pspy import seccomp
from pspy.seccomp import SeccompError

DOCKER = os.path.join(REPO, "tests", "data", "seccomp", "docker-default.json")
PODMAN = "/usr/share/containers/seccomp.json"
needs_podman = pytest.mark.skipif(not os.path.isfile(PODMAN), reason=f"{PODMAN} missing: install Debian's "
                                  "golang-github-containers-common (scripts/setup.sh does, with the test extras)")


def _effective(app_root, spec, network=False):
    return seccomp.effective(spec, network=network, front_end=False, app_root=str(app_root), where="svc.py:3")


def _profile_file(tmp_path, profile, name="p.json"):
    (tmp_path / name).write_text(json.dumps(profile))
    return name


# --- the real profiles ----------------------------------------------------------------

def test_dockers_default_profile_loads_as_docker_applies_it_here(tmp_path, capsys):
    shutil.copy(DOCKER, tmp_path / "docker.json")
    eff = _effective(tmp_path, "docker.json")
    profile = eff["profile"]
    assert seccomp.compile_bpf(profile)
    assert capsys.readouterr().err == ""   # nothing in it that pspy ignores
    names = seccomp.allowed_names(profile)
    assert {"read", "openat", "futex", "getpid", "execve"} <= names                     # controls
    assert not names & {"keyctl", "add_key", "unshare", "mount", "setns", "bpf", "chroot", "reboot"}
    assert "ptrace" in names                     # includes.minKernel 4.8: this kernel is newer
    assert ("arch_prctl" in names) == (platform.machine() == "x86_64")   # an amd64 entry
    assert not names & {"s390_runtime_instr", "set_tls"}                  # other architectures' entries
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert [e for e in profile["syscalls"] if "clone3" in e["names"]] == \
        [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]      # excludes.caps: applies
    assert profile["architectures"] == [seccomp.native_arch()[0]]
    derived = "\n".join(eff["derived"])
    assert "other architectures" in derived and "chown32" in derived            # skipped, and said so
    assert "includes.caps" in derived and "unshare" in derived


@needs_podman
def test_podmans_default_profile_loads_as_podman_applies_it_here(tmp_path, capsys):
    shutil.copy(PODMAN, tmp_path / "podman.json")
    profile = _effective(tmp_path, "podman.json")["profile"]
    assert seccomp.compile_bpf(profile)
    assert capsys.readouterr().err == ""   # defaultErrno and errno are Podman's and understood
    names = seccomp.allowed_names(profile)
    assert {"read", "openat", "keyctl", "getpid"} <= names                       # controls
    assert not names & {"chroot", "acct", "add_key", "open_by_handle_at"}
    assert profile["defaultErrnoRet"] == 38                                      # defaultErrno ENOSYS
    by_name = {n: e for e in profile["syscalls"] for n in e["names"] if e["action"] == "SCMP_ACT_ERRNO"}
    assert by_name["chroot"]["errnoRet"] == 1 and by_name["acct"]["errnoRet"] == 1   # errno EPERM, excludes.caps


# --- what pspy reads of a profile ------------------------------------------------------------

def test_fields_pspy_does_not_act_on_are_warned_about_once_naming_the_field_and_the_file(tmp_path, capsys):
    name = _profile_file(tmp_path, {
        "defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/listener.sock", "listenerMetadata": "x",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"], "vendorThing": 1,
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "podmanOnly": True},
                     {"names": ["write"], "action": "SCMP_ACT_ALLOW", "podmanOnly": False}]})
    first = _effective(tmp_path, name)
    _effective(tmp_path, name)                     # read again: no second warning
    lines = capsys.readouterr().err.splitlines()
    path = str(tmp_path / name)
    for field in ("listenerPath", "listenerMetadata", "flags", "vendorThing", "syscalls[].podmanOnly"):
        mine = [line for line in lines if f" {field} ignored" in line]
        assert len(mine) == 1 and path in mine[0] and mine[0].startswith("pspy: warning: "), (field, lines)
    assert len(lines) == 5
    assert "first at syscalls[0], 2 in all" in "\n".join(lines)
    assert {"read", "write"} <= seccomp.allowed_names(first["profile"])          # and it loaded
    assert any("listenerPath" in d for d in first["derived"])                    # analyze shows it too
    _effective(tmp_path, "default")                # control: a shipped profile warns of nothing
    assert capsys.readouterr().err == ""


def test_a_typo_in_a_syscall_name_is_an_error_naming_the_profile_other_architectures_names_are_not(tmp_path):
    base = {"defaultAction": "SCMP_ACT_ERRNO"}
    foreign = _profile_file(tmp_path, dict(base, syscalls=[
        {"names": ["read", "chown32"], "action": "SCMP_ACT_ALLOW"},       # chown32: 32-bit ABIs' only
        {"names": ["s390_made_up"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}}]), "ok.json")
    eff = _effective(tmp_path, foreign)
    assert "read" in seccomp.allowed_names(eff["profile"])
    assert not seccomp.allowed_names(eff["profile"]) & {"chown32", "s390_made_up"}
    assert any("chown32" in d for d in eff["derived"])
    for entry in ({"names": ["read", "frobnicate"], "action": "SCMP_ACT_ALLOW"},
                  # an entry for this architecture that does not apply (capabilities) is checked all the same
                  {"names": ["frobnicate"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}):
        bad = _profile_file(tmp_path, dict(base, syscalls=[entry]), "typo.json")
        with pytest.raises(SeccompError) as info:
            _effective(tmp_path, bad)
        message = str(info.value)
        assert "frobnicate" in message and "typo.json (named at svc.py:3)" in message
        assert "read," not in message


def test_capabilities_and_min_kernel_decide_as_docker_would_for_a_principal(tmp_path):
    def allow(name, **conditions):
        return dict({"names": [name], "action": "SCMP_ACT_ALLOW"}, **conditions)
    name = _profile_file(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        allow("read"),                                                   # control
        allow("pread64", includes={"caps": ["CAP_SYS_ADMIN"]}),          # needs a capability: left out
        allow("pwrite64", excludes={"caps": ["CAP_SYS_ADMIN"]}),         # for those without it: applies
        allow("readv", includes={"minKernel": "3.0"}),
        allow("writev", includes={"minKernel": "250.1"}),
        allow("preadv", excludes={"minKernel": "3.0"}),
        allow("pwritev", excludes={"minKernel": "250.1"})]})
    names = seccomp.allowed_names(_effective(tmp_path, name)["profile"])
    assert {"read", "pwrite64", "readv", "pwritev"} <= names
    assert not names & {"pread64", "writev", "preadv"}
    bad = _profile_file(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        allow("read", includes={"minKernel": "4"})]}, "bad.json")
    with pytest.raises(SeccompError, match=r"bad\.json.*minKernel '4'"):
        _effective(tmp_path, bad)


@pytest.mark.parametrize("profile, complaint", [
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrno": "ENOPE"}, "not an errno name"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrno": "ENOSYS", "defaultErrnoRet": 1}, "disagree"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "name": "write",
                                                        "action": "SCMP_ACT_ALLOW"}]}, "both name and names"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "archMap": [{"architecture": "x86_64"}]}, "archMap[0]"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                                        "includes": {"kernelFlavour": "rt"}}]}, "only arches"),
    # A misspelt field would be ignored and widen the profile: an error, not a warning.
    ({"defaultAction": "SCMP_ACT_ALLOW", "sycalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]},
     "did you mean 'syscalls'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                                                        "include": {"caps": ["CAP_SYS_ADMIN"]}}]},
     "did you mean 'includes'"),
])
def test_what_docker_or_podman_would_refuse_or_read_differently_is_refused(tmp_path, profile, complaint):
    with pytest.raises(SeccompError) as info:
        _effective(tmp_path, _profile_file(tmp_path, profile))
    assert complaint in str(info.value) and "p.json" in str(info.value)


def test_podmans_errno_names_set_the_errno(tmp_path):
    name = _profile_file(tmp_path, {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrno": "ENOSYS", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errno": "EACCES"}]})
    profile = _effective(tmp_path, name)["profile"]
    assert profile["defaultErrnoRet"] == 38
    assert [e["errnoRet"] for e in profile["syscalls"] if e["names"] == ["chroot"]] == [13]


def test_bootstrap_warns_of_an_ignored_field_and_names_a_typo_with_the_file_and_line(tmp_path):
    app = write_app(tmp_path / "app", {
        "svc.py": "import pspy\n\n@pspy.service(service_provider='Svc', seccomp='podman.json')\ndef f():\n    pass\n",
        "podman.json": json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/l.sock",
                                   "syscalls": [{"names": ["raed"], "action": "SCMP_ACT_ALLOW"}]})})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--no-run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pspy: warning: seccomp profile" in proc.stderr and "listenerPath ignored" in proc.stderr
    assert "podman.json (named at svc.py:3): listenerPath" in proc.stderr
    assert "raed" in proc.stderr and "podman.json" in proc.stderr and "svc.py:3" in proc.stderr


# --- enforced inside real principals ---------------------------------------------------

SERVICES = """
import ctypes, errno, platform
import pspy

_libc = ctypes.CDLL(None, use_errno=True)
_NR = {"x86_64": {"keyctl": 250, "add_key": 248}, "aarch64": {"keyctl": 219, "add_key": 217}}[platform.machine()]


def _result(value):
    return "ok" if value >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def _attempts():
    return {
        "getpid": _result(_libc.getpid()),                                   # control
        "chroot": _result(_libc.chroot(b"/no-such-folder")),                 # ENOENT unfiltered
        "keyctl": _result(_libc.syscall(_NR["keyctl"], 0, -1, 0)),           # KEYCTL_GET_KEYRING_ID, thread's
        "add_key": _result(_libc.syscall(_NR["add_key"], b"no-such-key-type", b"x", None, 0, -2)),
        "ptrace": _result(_libc.ptrace(16, 0x3FFFFFFF, None, None)),          # PTRACE_ATTACH, no such pid
    }


@pspy.service(service_provider="Docker", seccomp="profiles/docker-default.json")
def under_docker():
    return _attempts()


@pspy.service(service_provider="Podman")      # pspy.toml names its profile
def under_podman():
    return _attempts()


@pspy.service(service_provider="Open", seccomp="none")
def unfiltered():
    return _attempts()
"""


@pytest.fixture(scope="module")
def interop_jail(tmp_path_factory):
    if not os.path.isfile(PODMAN):
        pytest.skip(f"{PODMAN} missing: install Debian's golang-github-containers-common")
    root = tmp_path_factory.mktemp("interop")
    app = write_app(root / "app", {"interop.py": SERVICES,
                                   "pspy.toml": 'seccomp = { Podman = "profiles/podman-default.json" }\n'})
    os.makedirs(os.path.join(app, "profiles"))
    shutil.copy(DOCKER, os.path.join(app, "profiles", "docker-default.json"))
    shutil.copy(PODMAN, os.path.join(app, "profiles", "podman-default.json"))
    jail = str(root / "jail")
    pspy("bootstrap", app, "--jail", jail, "--detach", check=True)
    yield jail
    pspy("stop", "--jail", jail)


def _call(jail, service):
    return probe(jail, "web", OUTCOME + f"import interop\nprint(json.dumps(outcome(interop.{service})))")


@pytest.mark.root
def test_dockers_and_podmans_profiles_are_enforced_inside_their_principals(interop_jail):
    kind, bare = _call(interop_jail, "unfiltered")
    assert kind == "ok", bare
    # Control: without a filter the kernel answers for itself, never EPERM or ENOSYS.
    assert bare["getpid"] == "ok" and bare["chroot"] == "ENOENT" and bare["ptrace"] == "ESRCH"
    assert bare["add_key"] not in ("EPERM", "ENOSYS") and bare["keyctl"] not in ("EPERM", "ENOSYS")
    kind, docker = _call(interop_jail, "under_docker")
    assert kind == "ok", docker                      # it runs, and serves, under Docker's profile
    assert docker == {"getpid": "ok", "chroot": "EPERM", "keyctl": "EPERM", "add_key": "EPERM",
                      "ptrace": "ESRCH"}             # ptrace: Docker's minKernel 4.8 entry, applied
    kind, podman = _call(interop_jail, "under_podman")
    assert kind == "ok", podman
    assert podman == {"getpid": "ok", "chroot": "EPERM",          # Podman's errno EPERM for want of a capability
                      "keyctl": bare["keyctl"],                   # allowed by Podman's profile
                      "add_key": "ENOSYS",                        # not listed: Podman's defaultErrno ENOSYS
                      "ptrace": "ESRCH"}


@pytest.mark.root
def test_export_of_a_principal_under_dockers_profile_loads_back_unchanged(interop_jail, tmp_path):
    exported = json.loads(pspy("export", "seccomp", "Docker", "--jail", interop_jail, check=True).stdout)
    (tmp_path / "exported.json").write_text(json.dumps(exported))
    again = _effective(tmp_path, "exported.json")
    assert again["profile"] == exported              # the derived rules hold already: nothing to change
    assert seccomp.compile_bpf(again["profile"])
    assert "keyctl" not in seccomp.allowed_names(exported) and "read" in seccomp.allowed_names(exported)


def test_without_network_a_permissive_profile_still_refuses_inet_sockets_and_io_uring(tmp_path):
    """A profile users already have may allow everything by default, or allow
    io_uring (Docker's does): network=False still leaves AF_UNIX only."""
    import base64
    import socket
    from pspy._native import ffi, lib
    for profile in ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []},
                    {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                        {"names": ["socket", "io_uring_setup"], "action": "SCMP_ACT_ALLOW"}]}):
        policy = seccomp.compiled(_effective(tmp_path, _profile_file(tmp_path, profile)))
        names = {n for e in policy["profile"]["syscalls"] if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]}
        assert "io_uring_setup" not in names
        if profile["defaultAction"] != "SCMP_ACT_ALLOW":
            continue   # this one allows too little to run the check below; its allow list is the point
        program = base64.b64decode(policy["bpf"])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the filter goes into a child of the test, never the test itself
            os.close(read)
            result = []
            if lib.pspy_load_bpf(ffi.from_buffer(program), len(program), 0) == 0:
                for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
                    try:
                        socket.socket(family).close()
                        result.append("ok")
                    except OSError as e:
                        result.append(e.errno)
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        assert json.loads(os.read(read, 1000)) == ["ok", 1, 1], profile   # EPERM for inet
        os.close(read)
