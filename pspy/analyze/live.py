"""``pspy analyze --live``: the report, verified from inside the running principals.

A "cannot" in a report is only trustworthy once it was tried. For each
principal a probe runs as that principal, in its sandbox, and tries what
the report claims about it, both ways:

- every app file and folder: open for reading (a folder: list it) and for
  writing (a file: open write-only, without truncating; a folder: create
  an unnamed file in it with O_TMPFILE, which never appears in it). Nothing
  in the app changes. Executing is not tried;
- every service of every other provider: connect to the provider's socket
  as it is in the principal's view and ask, with the MAY_CALL request,
  whether the provider's own authorisation (the check a real call meets,
  on the kernel's peer credentials) lets it call that service. No service
  runs;
- the network: connect to a TCP listener this command opens on the host's
  loopback; a principal the report gives the host network must get
  through, one it gives "none" must not.

Where the principal runs, the probe joins it: in namespace mode its mount
and network namespaces and the app's user namespace, taken from its running
process (as ``nsenter`` or firejail's ``--join`` would), then its ids, no
new privileges, and its seccomp filter (loaded by pspy's sitecustomize, as
in every principal). In chroot mode a principal has no namespace to join:
the probe is chrooted into the jail with the principal's ids and filter,
exactly as the supervisor starts it. A principal that is not running (and
every principal rootless, whose processes are closed even to their own
user) is probed in a fresh sandbox built from the plan, and the result says
so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

from .. import _native as n
from ..errors import PspyError
from ..plan import Plan
from ..running import children_of, read_state, still_running, supervisor_alive
from ..sandbox.spawn import principal_env, resolve_argv, spawn_principal
from .findings import unfiltered

PROBE_TIMEOUT = 120   # seconds for one principal's probe
DANGEROUS_FOR_PROBES = {"ptrace", "process_vm_writev", "unshare", "setns", "mount"}

PROBE = r"""
import errno, json, os, socket, sys
req = json.loads(sys.stdin.read())

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    except Exception as e:
        return type(e).__name__

FLAGS = os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC

def read(path):
    if path.endswith("/"):
        os.listdir(path)
    else:
        os.close(os.open(path, os.O_RDONLY | FLAGS))

def write(path):
    if path.endswith("/"):
        os.close(os.open(path, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    else:
        os.close(os.open(path, os.O_WRONLY | FLAGS))

import stat
files = {}
for rel in req["files"]:
    path = req["app_dir"].rstrip("/") + "/" + ("" if rel == "./" else rel)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = 0
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        files[rel] = ["special", "special"]   # a FIFO or socket: open says nothing about the bits
        continue
    files[rel] = [attempt(lambda: read(path)), attempt(lambda: write(path))]

calls = {}
if req["calls"]:
    from pspy.rpc import protocol
for provider, (path, services) in req["calls"].items():
    answers = calls[provider] = {}
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
    except OSError as e:
        for name in services:
            answers[name] = "connect: " + errno.errorcode.get(e.errno, str(e))
        continue
    conn = protocol.Connection(s)
    for i, name in enumerate(services):
        try:
            conn.send_message([protocol.MAY_CALL, [name], {}])
            status, value = conn.recv_message()
            answers[name] = value if status == protocol.OK else "status %d: %s" % (status, value)
        except Exception as e:
            # A provider that does not answer one does not answer the rest: no
            # waiting out a timeout per service.
            for rest in services[i:]:
                answers[rest] = type(e).__name__
            break
    s.close()

def tcp():
    with socket.create_connection(tuple(req["tcp"]), timeout=3):
        pass
network = attempt(tcp)
print(json.dumps({"files": files, "calls": calls, "network": network}))
"""


def _running_pids(plan: Plan, name: str, supervisor: int | None) -> tuple[int, int] | None:
    """(its PID 1, the principal's own process) in namespace mode; in chroot
    mode (its process, the same)."""
    if supervisor is None:
        return None
    pid = ((read_state(plan) or {}).get("principals", {}).get(name) or {}).get("pid")
    if not isinstance(pid, int) or not still_running(pid):
        return None
    if plan.mode == "namespaces":
        kids = children_of(pid)
        return (pid, kids[0]) if kids else None
    return pid, pid


NAMESPACES = (("mnt", n.CLONE_NEWNS), ("net", n.CLONE_NEWNET), ("user", n.CLONE_NEWUSER))


def left_namespaces(init: int, principal: int) -> list[str]:
    """The namespaces the principal is no longer in, of those pspy made for it
    (its PID 1 stays in them: no app code runs there)."""
    out = []
    for ns in ("mnt", "net", "user", "pid_for_children", "ipc", "uts"):
        try:
            if os.stat(f"/proc/{init}/ns/{ns}").st_ino != os.stat(f"/proc/{principal}/ns/{ns}").st_ino:
                out.append(ns)
        except FileNotFoundError:
            pass
    return out


def _joiner(plan: Plan, principal, init: int):
    """The preexec function that enters the principal's namespaces, as its
    PID 1 holds them, and becomes it: ids, limits, cgroups, no new
    privileges. PID 1 is pspy's (pspy-init): the principal can neither run
    code in it nor move it, so what the probe joins is what pspy built even if
    the principal made namespaces of its own. The namespace files are opened
    now, in the parent."""
    from ..limits import rlimits as rlimits_of
    from ..sandbox import cgroup
    fds = []
    for ns, flag in NAMESPACES:
        path = f"/proc/{init}/ns/{ns}"
        if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino:
            continue   # shared with us (a principal on the host network)
        fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag))
    procs = cgroup.prepare(plan, principal)
    limits = rlimits_of(principal.limits, plan.rootless, per_call=principal.isolation == "per_call")
    import resource

    import prctl

    from ..sandbox import ids   # imported here, not between fork and exec

    def enter():
        os.umask(0o077)
        cgroup.attach_self(procs)
        for fd, flag in fds:   # mount and network as host root; the user namespace last
            n.setns(fd, flag)
        os.chdir(plan.app_dir)
        ids.become(principal)
        for resource_, soft, hard in limits:
            resource.setrlimit(resource_, (soft, hard))
        prctl.set_no_new_privs(True)
    return enter, [fd for fd, _ in fds]


def probe(plan: Plan, principal, request: dict, pids: tuple[int, int] | None) -> tuple[dict, str]:
    """Run the probe as the principal; (its answer, how it got there)."""
    argv = resolve_argv(plan, ["python", "-c", PROBE])
    fds: list[int] = []
    userns_fd = None
    try:
        if pids is not None and plan.mode == "namespaces" and not plan.rootless:
            enter, fds = _joiner(plan, principal, pids[0])
            how = f"probe joined the namespaces of its running process {pids[1]}"
            try:
                proc = subprocess.Popen(argv, env=principal_env(plan, principal), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                        start_new_session=True, preexec_fn=enter)
            except (OSError, subprocess.SubprocessError) as e:
                raise PspyError(f"cannot start the probe in {principal.name}'s namespaces: {e}") from None
        else:
            if plan.mode == "namespaces":
                from ..sandbox.user import create_user_namespace
                userns_fd = create_user_namespace(plan)
                how = ("probe ran in a fresh sandbox from the plan (rootless: the running principals are "
                       "closed to their own user)" if plan.rootless else
                       "probe ran in a fresh sandbox from the plan (it is not running)")
            else:
                how = "probe ran chrooted into the jail as the principal (chroot mode has no namespace to join)"
            proc = spawn_principal(plan, principal, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, supervised=True, new_session=True, userns_fd=userns_fd)
    finally:
        for fd in fds:
            os.close(fd)
        if userns_fd is not None:
            os.close(userns_fd)
    try:
        out, err = _communicate(proc, json.dumps(request).encode())
    except subprocess.TimeoutExpired:
        proc.kill()
        raise PspyError(f"the probe as {principal.name} did not finish within {PROBE_TIMEOUT} s") from None
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise PspyError(f"the probe as {principal.name} failed (status {proc.returncode}): "
                        f"{err.decode(errors='replace').strip()[-600:]}")
    return json.loads(lines[-1]), how


def _communicate(proc, data: bytes) -> tuple[bytes, bytes]:
    """Popen.communicate for a Popen or a namespace-mode Launched (which has
    the same pipes and wait, not communicate)."""
    if isinstance(proc, subprocess.Popen):
        return proc.communicate(data, timeout=PROBE_TIMEOUT)
    import threading
    got: dict[str, bytes] = {}

    def drain(name, stream):
        got[name] = stream.read()
        stream.close()
    readers = [threading.Thread(target=drain, args=(name, stream), daemon=True)
               for name, stream in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    try:
        proc.stdin.write(data)
    except BrokenPipeError:
        pass
    proc.stdin.close()
    proc.wait(timeout=PROBE_TIMEOUT)
    for t in readers:
        t.join(10)
    return got.get("out", b""), got.get("err", b"")


def verify(plan: Plan, data: dict) -> dict:
    """Every claim of the report about each principal, tried; the disagreements."""
    if plan.rootless and os.geteuid() != plan.uid_base:
        raise PspyError(f"{plan.jail} holds a rootless app of uid {plan.uid_base}; run --live as that user")
    if not plan.rootless and os.geteuid() != 0:
        raise PspyError("--live needs root: it runs a probe as each principal")
    supervisor = supervisor_alive(plan)
    if supervisor is None:
        raise PspyError(f"the app in {plan.jail} is not running; --live verifies a running app "
                        f"(pspy bootstrap --detach first)")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    results = {}
    try:
        for entry in data["principals"]:
            principal = plan.principal(entry["name"])
            calls = {}
            for q in plan.providers:
                if q.name == principal.name:
                    continue
                names = [name for s in q.services
                         for name in ([f"{s.name}.{m}" for m in s.methods] if s.kind == "class" else [s.name])]
                # Where the provider's socket is in the principal's view (rootless:
                # the caller's own socket is mounted there).
                calls[q.name] = [q.socket, names]
            request = {"app_dir": plan.app_dir, "files": list(entry["files"]), "calls": calls,
                       "tcp": list(listener.getsockname())}
            pids = _running_pids(plan, principal.name, supervisor)
            seen, how = probe(plan, principal, request, pids)
            result = {"how": how, **compare(entry, seen)}
            if pids is not None and plan.mode == "namespaces" and not plan.rootless:
                for ns in left_namespaces(*pids):
                    result["checks"] += 1
                    result["disagreements"].append({
                        "what": "namespace", "subject": ns, "claimed": "is", "action": "in pspy's",
                        "observed": "found it in one of its own"})
            sc = entry["seccomp"]
            risky = sorted(DANGEROUS_FOR_PROBES & set(sc.get("dangerous", ())))
            if unfiltered(sc) or risky:
                result["caveat"] = (f"its policy allows {', '.join(risky) or 'every syscall'}: a compromised "
                                    f"{principal.name} could tamper with a probe of its own uid, so its result "
                                    "is only as trustworthy as it is")
            results[principal.name] = result
    finally:
        listener.close()
    total = sum(r["checks"] for r in results.values())
    wrong = sum(len(r["disagreements"]) for r in results.values())
    return {"checks": total, "disagreements": wrong, "principals": results}


def compare(entry: dict, seen: dict) -> dict:
    """The report's claims about one principal against what its probe saw."""
    out = []
    checks = 0
    for rel, verdict in entry["files"].items():
        got = seen["files"].get(rel)
        if got is None or got[0] == "special":
            continue
        for i, (letter, word) in enumerate((("r", "read"), ("w", "write"))):
            checks += 1
            claimed, observed = letter in verdict, got[i] == "ok"
            if claimed != observed:
                out.append({"what": "file", "subject": rel, "action": word,
                            "claimed": "can" if claimed else "cannot",
                            "observed": "can" if observed else f"cannot ({got[i]})"})
    may_call = set(entry.get("may_call", ()))
    for provider, answers in seen["calls"].items():
        for name, answer in answers.items():
            checks += 1
            claimed = f"{provider}.{name}" in may_call
            observed = answer is True
            if claimed != observed:
                out.append({"what": "call", "subject": f"{provider}.{name}", "action": "call",
                            "claimed": "can" if claimed else "cannot",
                            "observed": "can" if observed else f"cannot ({answer})"})
    checks += 1
    claimed = entry["network"] == "host"
    observed = seen["network"] == "ok"
    if claimed != observed:
        out.append({"what": "network", "subject": "TCP to the host's loopback", "action": "connect",
                    "claimed": "can" if claimed else "cannot",
                    "observed": "can" if observed else f"cannot ({seen['network']})"})
    return {"checks": checks, "disagreements": out}


def format_live(result: dict) -> str:
    from .text import shown
    lines = [f"pspy analyze --live: {result['checks']} checks, {result['disagreements']} disagreement(s) "
             "with the report"]
    for name, r in result["principals"].items():
        lines.append(f"  {name}: {r['checks']} checks, {len(r['disagreements'])} disagreement(s); {r['how']}")
        if r.get("caveat"):
            lines.append(f"    CAVEAT: {r['caveat']}")
        for d in r["disagreements"]:
            lines.append(f"    DISAGREES: {d['what']} {shown(d['subject'])}: the report says {name} {d['claimed']} "
                         f"{d['action']}, the probe {shown(d['observed'])}")
    return "\n".join(lines) + "\n"
