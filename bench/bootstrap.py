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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOOBANK = os.path.join(REPO, "examples", "zoobank")
sys.path.insert(0, REPO)


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


def startup_times(runs: int, workdir: str) -> dict:
    from pspy.plan import Plan
    from pspy.sandbox import net, template
    from pspy.sandbox.spawn import provider_argv, spawn_principal
    from pspy.sandbox.user import create_user_namespace
    from pspy.supervisor import listen, ping

    # Start-up is timed until the interpreter writes its first byte: the
    # tear-down of a PID and mount namespace after exit is not start-up.
    ready = ["python", "-c", "import os; os.write(1, b'!')"]

    def until_first_byte(start) -> float:
        r, w = os.pipe()
        t0 = time.perf_counter()
        proc = start(w)
        os.close(w)
        os.read(r, 1)
        elapsed = time.perf_counter() - t0
        os.close(r)
        proc.wait()
        return elapsed

    # The same app without filters: the sandbox's own cost, apart from seccomp's.
    unfiltered = os.path.join(workdir, "zoobank-unfiltered")
    shutil.copytree(ZOOBANK, unfiltered, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(unfiltered, "pspy.toml"), "a") as f:
        f.write('seccomp = { web = "none", Auth = "none", Bank = "none" }\n')
    net.warm_up()   # as the supervisor does
    setups = []     # (mode, tag, plan, userns fd)
    out: dict[str, float] = {}
    try:
        for mode, app, tag in (("chroot", unfiltered, ""), ("namespaces", unfiltered, ""),
                               ("chroot", ZOOBANK, ", seccomp"), ("namespaces", ZOOBANK, ", seccomp")):
            jail = os.path.join(workdir, f"start-{mode}{tag.replace(', ', '-')}")
            flags = ["--namespaces"] if mode == "namespaces" else []
            subprocess.run([sys.executable, "-m", "pspy", "bootstrap", app, "--jail", jail, "--no-run", *flags],
                           check=True, capture_output=True)
            plan = Plan.load(jail)
            userns = create_user_namespace(plan) if mode == "namespaces" else None
            setups.append((mode, tag, plan, userns))
            if mode == "namespaces" and not tag:
                # Once per principal and supervisor: the root every start copies.
                samples = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    os.close(template.build(plan, plan.principal("Bank"), userns))
                    samples.append(time.perf_counter() - t0)
                out["build a principal's root (once per run)"] = statistics.median(samples)

        # Interpreter starts: every condition once per round, so that this
        # machine's drift over the run falls on all of them alike.
        conditions = {"python start, host": lambda w: subprocess.Popen([sys.executable, *ready[1:]], stdout=w)}
        if shutil.which("bwrap"):
            bwrap = bwrap_argv(setups[0][2])
            conditions["python start, bubblewrap (for comparison)"] = (
                lambda w: subprocess.Popen([*bwrap, sys.executable, *ready[1:]], stdout=w))
        for mode, tag, plan, userns in setups:
            for who in ("web", "Bank"):
                conditions[f"python start, as {who} ({mode}{tag})"] = (
                    lambda w, plan=plan, who=who, userns=userns:
                    spawn_principal(plan, plan.principal(who), ready, stdout=w, userns_fd=userns))
        samples_of: dict[str, list[float]] = {key: [] for key in conditions}
        order = list(conditions)
        shuffle = random.Random(0).shuffle
        for round_ in range(runs + 1):
            # In a new order each round: the kernel tears network namespaces
            # down in the background, and whatever ran after one would pay.
            shuffle(order)
            for key in order:
                elapsed = until_first_byte(conditions[key])
                if round_:   # the first round builds templates and warms caches
                    samples_of[key].append(elapsed)
                time.sleep(0.02)
        out.update({key: statistics.median(samples) for key, samples in samples_of.items()})

        for mode, tag, plan, userns in setups:
            for provider in plan.providers:
                samples = []
                for _ in range(runs):
                    listener = listen(plan, provider)
                    t0 = time.perf_counter()
                    proc = spawn_principal(plan, provider, provider_argv(plan), pass_fds=(listener.fileno(),),
                                           userns_fd=userns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    while not ping(plan, provider, timeout=0.5):
                        if proc.poll() is not None:
                            raise SystemExit(f"{provider.name} exited with {proc.returncode}")
                        time.sleep(0.001)
                    samples.append(time.perf_counter() - t0)
                    proc.send_signal(15)
                    proc.wait()
                    listener.close()
                out[f"spawn -> {provider.name} answers ({mode}{tag})"] = statistics.median(samples)
    finally:
        for mode, tag, plan, userns in setups:
            if userns is not None:
                template.release(plan)
                os.close(userns)
    return out


def bwrap_argv(plan) -> list[str]:
    """bubblewrap with what a namespace-mode principal gets: new user, mount,
    PID, IPC, UTS, cgroup and network namespaces, the system and Python
    installation read-only, fresh /proc, /dev and /tmp, no capability."""
    from pspy.sandbox import mount
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in mount.python_paths(plan.jail):
        argv += ["--ro-bind", path, path]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/"]


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
    base = start["python start, host"]
    print(f"{'what':<44}{'time':>10}{'vs host python':>18}")
    for key, value in start.items():
        extra = f"{(value - base) * 1000:>+14.1f} ms" if key.startswith("python start") else ""
        print(f"{key:<44}{value * 1000:>7.1f} ms{extra}")
    for mode in ("chroot", "namespaces"):
        for who, what in (("web", "host network"), ("Bank", "own network namespace")):
            if mode == "chroot" and who == "Bank":
                continue
            overhead = start[f"python start, as {who} ({mode})"] - base
            label = f"sandbox overhead, {mode}" + (f", {what}" if mode == "namespaces" else "")
            print(f"{label:<44}{overhead * 1000:>7.1f} ms")
    if "python start, bubblewrap (for comparison)" in start:
        overhead = start["python start, bubblewrap (for comparison)"] - base
        print(f"{'sandbox overhead, bubblewrap':<44}{overhead * 1000:>7.1f} ms")
    for mode in ("chroot", "namespaces"):
        for who, profile in (("web", "web"), ("Bank", "default")):
            cost = start[f"python start, as {who} ({mode}, seccomp)"] - start[f"python start, as {who} ({mode})"]
            label = f"seccomp filter load, {mode}, {profile}"
            print(f"{label:<44}{cost * 1000:>7.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bootstrap_s": {f"{label} / {mode}": v for (label, mode), v in boot.items()},
                       "startup_s": start}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
