"""Bootstrap and start-up costs of pspy's two isolation modes, in one run.

    sudo python bench/bootstrap.py [--runs N] [--padding-mb M] [--json FILE]

1. `pspy bootstrap --no-run` of zoobank into a fresh jail, in chroot mode
   (which copies the interpreter and site-packages) and namespace mode
   (which copies nothing), with the real site-packages and with one padded
   by M MB of extra package files; ratios against namespace mode.
2. Start-up of one principal: the time until a Python interpreter writes
   its first byte, on the host against the same command run as a principal
   in each mode, without a seccomp filter (seccomp "none"); the difference
   is what the sandbox adds (target: at most 5 ms in namespace mode). The
   same with each principal's planned filter (web: 'web', Bank: 'default')
   gives what loading the filter adds, as its own row. Every condition is
   sampled once per round, in a new order each round, so drift during the
   run falls on all alike. Namespace mode builds each principal's root once
   per supervisor (sandbox/template.py) and copies it at every start: that
   one-off build is its own row. Where bubblewrap (bwrap) is installed, the
   same interpreter started in a comparable bubblewrap sandbox is a row too.
   Then the time from spawn to "the provider answers on its socket", per
   provider and mode.
The padding is a folder pspy_bench_padding/ put into this interpreter's
site-packages for the run and removed afterwards.

A start-up row counts only if its command really ran: it wrote the expected
output and exited 0. A row that did not run shows "did not run: <reason>"
instead of a time (in --json: {"not_run": reason}), and so does every row
derived from it; if one of pspy's own rows did not run, the bench exits 1
after printing the table. The bubblewrap row is only a comparison: without
bwrap, or with a bwrap that fails, it says so and the exit status is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOOBANK = os.path.join(REPO, "examples", "zoobank")
sys.path.insert(0, REPO)

from pspy.errors import PspyError  # noqa: E402 - from this checkout, on the path just above

# What every interpreter start runs, and what it must write to count as started.
READY_CODE = "import os; os.write(1, b'!')"
READY_OUTPUT = b"!"
HOST_ROW = "python start, host"
BWRAP_ROW = "python start, bubblewrap (for comparison)"
COMPARISON_ROWS = (BWRAP_ROW,)   # not pspy's: their failure is reported, not fatal
START_TIMEOUT_S = 60.0


class NotRun(Exception):
    """Why a row has no number: its command failed, or what it needs is missing.
    Kept in place of the row's time, so that it cannot be read as one."""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def first_line(text: str) -> str:
    return next(iter(_lines(text)), "")


def stderr_reason(stderr: bytes) -> str:
    """The line of a failed command's stderr that says what went wrong: its
    first (bwrap, the launcher), or the last of a Python traceback, whose
    first line only says that a traceback follows."""
    lines = _lines(stderr.decode(errors="replace"))
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _read_until_eof(fd: int, deadline: float) -> bytes:
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return data
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def time_until_first_byte(start, expected: bytes = READY_OUTPUT, timeout: float = START_TIMEOUT_S) -> float:
    """Seconds from ``start(stdout_fd, stderr_file)`` (which returns a Popen-like
    process) until the command's first byte of output.

    Raises NotRun unless the command wrote exactly ``expected`` and exited 0:
    a sandbox that fails to exec also closes its output fast, and timing
    that would rank it faster than no sandbox at all.
    """
    r, w = os.pipe()
    # stderr goes to a file, not a pipe: a long error message cannot block
    # the command while this waits on its stdout.
    with tempfile.TemporaryFile() as stderr:
        try:
            deadline = time.monotonic() + timeout
            t0 = time.perf_counter()
            try:
                proc = start(w, stderr)
            except (OSError, PspyError) as e:
                raise NotRun(first_line(str(e)) or type(e).__name__) from None
            finally:
                os.close(w)
            ready, _, _ = select.select([r], [], [], timeout)
            output = os.read(r, 1) if ready else b""
            elapsed = time.perf_counter() - t0
            if output:
                output += _read_until_eof(r, deadline)
        finally:
            os.close(r)
        try:
            returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            raise NotRun(f"still running after {timeout:.0f} s (wrote {output!r})") from None
        stderr.seek(0)
        reason = stderr_reason(stderr.read())
    if returncode != 0:
        raise NotRun(f"{reason} (exit status {returncode})" if reason else f"exit status {returncode}, no stderr")
    if output != expected:
        raise NotRun(f"wrote {output!r} instead of {expected!r}" + (f": {reason}" if reason else ""))
    return elapsed


def interleaved_medians(conditions: dict, runs: int, pause: float = 0.02) -> dict[str, float | NotRun]:
    """Median time to first byte per condition (name -> start function, as
    for time_until_first_byte); a condition that fails once is NotRun, with
    its reason, and is not started again."""
    samples_of: dict[str, list[float]] = {key: [] for key in conditions}
    failed: dict[str, NotRun] = {}
    order = list(conditions)
    shuffle = random.Random(0).shuffle
    for round_ in range(runs + 1):
        # In a new order each round: the kernel tears network namespaces
        # down in the background, and whatever ran after one would pay.
        shuffle(order)
        for key in order:
            if key in failed:
                continue
            try:
                elapsed = time_until_first_byte(conditions[key])
            except NotRun as e:
                failed[key] = e
                continue
            if round_:   # the first round builds templates and warms caches
                samples_of[key].append(elapsed)
            time.sleep(pause)
    return {key: failed[key] if key in failed else statistics.median(samples_of[key]) for key in conditions}


def difference(minuend: float | NotRun, subtrahend: float | NotRun, names: tuple[str, str]) -> float | NotRun:
    """minuend - subtrahend, or NotRun naming the row that is missing."""
    for value, name in zip((minuend, subtrahend), names):
        if isinstance(value, NotRun):
            return NotRun(f"'{name}' did not run")
    return minuend - subtrahend


def time_cell(value: float | NotRun) -> str:
    """A row's time for the table, or why it has none."""
    if isinstance(value, NotRun):
        return f"   did not run: {value}"
    return f"{value * 1000:>7.1f} ms"


def json_value(value: float | NotRun) -> float | dict:
    return {"not_run": str(value)} if isinstance(value, NotRun) else value


def timed_bootstrap(jail: str, mode: str) -> float:
    flags = ["--namespaces"] if mode == "namespaces" else []
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pspy", "bootstrap", ZOOBANK, "--jail", jail, "--no-run",
                           *flags], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bootstrap failed: {proc.stderr}")
    return elapsed


def pad_site_packages(megabytes: int) -> str:
    site = sysconfig.get_paths()["purelib"]
    pad = os.path.join(site, "pspy_bench_padding")
    os.makedirs(pad, exist_ok=True)
    chunk = ("# padding\n" + "x = 1\n" * 8000).encode()   # about 48 KiB a file
    for i in range(megabytes * 1024 * 1024 // len(chunk)):
        with open(os.path.join(pad, f"module_{i}.py"), "wb") as f:
            f.write(chunk)
    return pad


def bootstrap_times(runs: int, padding_mb: int, workdir: str) -> dict:
    out = {}
    for label in ("real site-packages", f"site-packages + {padding_mb} MB"):
        pad = pad_site_packages(padding_mb) if label != "real site-packages" else None
        try:
            for mode in ("chroot", "namespaces"):
                samples = []
                for r in range(runs):
                    jail = os.path.join(workdir, f"jail-{mode}-{len(out)}-{r}")
                    samples.append(timed_bootstrap(jail, mode))
                    subprocess.run([sys.executable, "-m", "pspy", "stop", "--jail", jail], capture_output=True)
                    shutil.rmtree(jail, ignore_errors=True)
                out[(label, mode)] = statistics.median(samples)
        finally:
            if pad:
                shutil.rmtree(pad, ignore_errors=True)
    return out


def startup_times(runs: int, workdir: str) -> dict[str, float | NotRun]:
    from pspy.plan import Plan
    from pspy.sandbox import net, template
    from pspy.sandbox.spawn import spawn_principal
    from pspy.sandbox.user import create_user_namespace

    # Start-up is timed until the interpreter writes its first byte: the
    # tear-down of a PID and mount namespace after exit is not start-up.
    ready = ["python", "-c", READY_CODE]

    # The same app without filters: the sandbox's own cost, apart from seccomp's.
    unfiltered = os.path.join(workdir, "zoobank-unfiltered")
    shutil.copytree(ZOOBANK, unfiltered, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(unfiltered, "pspy.toml"), "a") as f:
        f.write('seccomp = { web = "none", Auth = "none", Bank = "none" }\n')
    net.warm_up()   # as the supervisor does
    setups = []     # (mode, tag, plan, userns fd)
    out: dict[str, float | NotRun] = {}
    try:
        for mode, app, tag in (("chroot", unfiltered, ""), ("namespaces", unfiltered, ""),
                               ("chroot", ZOOBANK, ", seccomp"), ("namespaces", ZOOBANK, ", seccomp")):
            jail = os.path.join(workdir, f"start-{mode}{tag.replace(', ', '-')}")
            flags = ["--namespaces"] if mode == "namespaces" else []
            proc = subprocess.run([sys.executable, "-m", "pspy", "bootstrap", app, "--jail", jail, "--no-run",
                                   *flags], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bootstrap of {app} ({mode}) failed: {proc.stderr}")
            plan = Plan.load(jail)
            userns = create_user_namespace(plan) if mode == "namespaces" else None
            setups.append((mode, tag, plan, userns))
            if mode == "namespaces" and not tag:
                out["build a principal's root (once per run)"] = template_build_time(plan, userns, runs)

        # Interpreter starts: every condition once per round, so that this
        # machine's drift over the run falls on all of them alike.
        conditions = {HOST_ROW: lambda w, err: subprocess.Popen([sys.executable, *ready[1:]], stdout=w, stderr=err)}
        bwrap_missing = None
        if shutil.which("bwrap"):
            bwrap = bwrap_argv(setups[0][2])
            conditions[BWRAP_ROW] = (
                lambda w, err: subprocess.Popen([*bwrap, sys.executable, *ready[1:]], stdout=w, stderr=err))
        else:
            bwrap_missing = NotRun("bwrap is not installed")
        for mode, tag, plan, userns in setups:
            for who in ("web", "Bank"):
                conditions[f"python start, as {who} ({mode}{tag})"] = (
                    lambda w, err, plan=plan, who=who, userns=userns:
                    spawn_principal(plan, plan.principal(who), ready, stdout=w, stderr=err, userns_fd=userns))
        starts = interleaved_medians(conditions, runs)
        out[HOST_ROW] = starts.pop(HOST_ROW)
        out[BWRAP_ROW] = bwrap_missing or starts.pop(BWRAP_ROW)
        out.update(starts)

        for mode, tag, plan, userns in setups:
            for provider in plan.providers:
                out[f"spawn -> {provider.name} answers ({mode}{tag})"] = answer_time(plan, provider, userns, runs)
    finally:
        for mode, tag, plan, userns in setups:
            if userns is not None:
                template.release(plan)
                os.close(userns)
    return out


def template_build_time(plan, userns: int, runs: int) -> float | NotRun:
    """Once per principal and supervisor: the root every start copies."""
    from pspy.sandbox import template
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            fd = template.build(plan, plan.principal("Bank"), userns)
        except PspyError as e:
            return NotRun(first_line(str(e)))
        samples.append(time.perf_counter() - t0)
        os.close(fd)
    return statistics.median(samples)


def answer_time(plan, provider, userns: int | None, runs: int) -> float | NotRun:
    """Median time from spawn to the provider's first answer on its socket,
    or NotRun with the provider's last words if it exits or never answers."""
    from pspy.sandbox.spawn import provider_argv, spawn_principal
    from pspy.sockets import listen, ping
    samples = []
    for _ in range(runs):
        listener = listen(plan, provider)
        with tempfile.TemporaryFile() as stderr:
            try:
                t0 = time.perf_counter()
                proc = spawn_principal(plan, provider, provider_argv(plan), pass_fds=(listener.fileno(),),
                                       userns_fd=userns, stdout=subprocess.DEVNULL, stderr=stderr)
            except PspyError as e:
                listener.close()
                return NotRun(first_line(str(e)))
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ping(plan, provider, timeout=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = f"exit status {proc.returncode}" if proc.returncode is not None else \
                        f"no answer within {START_TIMEOUT_S:.0f} s"
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    listener.close()
                    stderr.seek(0)
                    reason = stderr_reason(stderr.read())
                    return NotRun(f"{reason} ({why})" if reason else why)
                time.sleep(0.001)
            samples.append(time.perf_counter() - t0)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            listener.close()
    return statistics.median(samples)


def bwrap_argv(plan) -> list[str]:
    """bubblewrap with what a namespace-mode principal gets: new user, mount,
    PID, IPC, UTS, cgroup and network namespaces, the system and Python
    installation read-only, fresh /proc, /dev and /tmp, no capability."""
    from pspy.sandbox import mount
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in mount.SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    # bwrap mounts in the order given: the private /tmp before the Python
    # prefixes, so that one under /tmp on the host (a venv there, say) is
    # bound on top of it, not hidden by it, as in pspy's namespace mode.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in mount.python_paths(plan.jail):
        argv += ["--ro-bind", path, path]
    return [*argv, "--chdir", "/"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--padding-mb", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/bootstrap.py bootstraps jails: run it as root")
    workdir = tempfile.mkdtemp(prefix="pspy-bench-", dir="/var/tmp")
    os.chmod(workdir, 0o755)
    try:
        boot = bootstrap_times(args.runs, args.padding_mb, workdir)
        start = startup_times(max(args.runs, 10), workdir)
    finally:
        for entry in os.listdir(workdir):
            subprocess.run([sys.executable, "-m", "pspy", "stop", "--jail", os.path.join(workdir, entry)],
                           capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"pspy bootstrap of zoobank (--no-run), median of {args.runs}; ratio = chroot / namespaces")
    print(f"{'site-packages':<34}{'chroot mode':>14}{'namespace mode':>17}{'ratio':>9}")
    labels = sorted({label for label, _ in boot}, key=lambda label: "+" in label)
    for label in labels:
        c, n = boot[(label, "chroot")], boot[(label, "namespaces")]
        print(f"{label:<34}{c * 1000:>11.0f} ms{n * 1000:>14.0f} ms{c / n:>8.1f}x")
    print()
    print(f"start-up, median of {max(args.runs, 10)}; overhead = as a principal - on the host")
    base = start[HOST_ROW]
    print(f"{'what':<44}{'time':>10}{'vs host python':>18}")
    for key, value in start.items():
        extra = ""
        if key.startswith("python start") and not isinstance(value, NotRun) and not isinstance(base, NotRun):
            extra = f"{(value - base) * 1000:>+14.1f} ms"
        print(f"{key:<44}{time_cell(value)}{extra}")
    for mode in ("chroot", "namespaces"):
        for who, what in (("web", "host network"), ("Bank", "own network namespace")):
            if mode == "chroot" and who == "Bank":
                continue
            row = f"python start, as {who} ({mode})"
            label = f"sandbox overhead, {mode}" + (f", {what}" if mode == "namespaces" else "")
            print(f"{label:<44}{time_cell(difference(start[row], base, (row, HOST_ROW)))}")
    bwrap_overhead = difference(start[BWRAP_ROW], base, (BWRAP_ROW, HOST_ROW))
    print(f"{'sandbox overhead, bubblewrap':<44}{time_cell(bwrap_overhead)}")
    for mode in ("chroot", "namespaces"):
        for who, profile in (("web", "web"), ("Bank", "default")):
            filtered, unfiltered = f"python start, as {who} ({mode}, seccomp)", f"python start, as {who} ({mode})"
            cost = difference(start[filtered], start[unfiltered], (filtered, unfiltered))
            label = f"seccomp filter load, {mode}, {profile}"
            print(f"{label:<44}{time_cell(cost)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bootstrap_s": {f"{label} / {mode}": v for (label, mode), v in boot.items()},
                       "startup_s": {key: json_value(value) for key, value in start.items()}}, f, indent=2)
    missing = [key for key, value in start.items() if isinstance(value, NotRun) and key not in COMPARISON_ROWS]
    if missing:
        print(f"bench/bootstrap.py: {len(missing)} of pspy's rows did not run (see the table): "
              + "; ".join(f"{key}: {start[key]}" for key in missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
