"""``pspy bootstrap``: discover, plan, build the jail, run the app.

The jail is built in an order that never leaves it half-changed: the app
is staged, the set-up script runs on the staged copy, every owner and mode
change is checked before the first is made, and only then is the staged
copy swapped in and the new plan written.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
import sys
from dataclasses import dataclass, field

from . import config, jail, registry
from .discover import FRONT_END_NAME, Manifest, discover, python_files
from .errors import ConfigError, DiscoveryError, PlanError, PspyError
from .plan import (DEFAULT_GID_BASE, DEFAULT_JAIL, DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES, DEFAULT_MAX_FRAME,
                   DEFAULT_RPC_TIMEOUT, DEFAULT_UID_BASE, Options, Plan, build_plan, check_ids_free, plan_path)
from .sandbox.spawn import run_script
from .running import app_processes, jail_processes, supervisor_alive
from .logs import format_lines, prefix_width
from .supervisor import Supervisor, log_path


@dataclass
class Request:
    """What the user asked for on the command line; None means "not given"."""
    app_dir: str
    jail: str | None = None
    script: str | None = None
    files: list[str] = field(default_factory=list)
    uid_base: int | None = None
    gid_base: int | None = None
    front_end: list[str] = field(default_factory=list)
    namespaces: bool = False
    learn: bool = False          # pspy learn: principals record their syscalls


UNSAFE_ENV_PREFIXES = ("PYTHON", "LD_", "PSPY_")
# Interpreter flags that skip pspy's sitecustomize (-S, -I) or its environment (-E, -I).
UNSAFE_PYTHON_FLAGS = ("-S", "-I", "-E")


def check_front_end(argv: list[str]) -> None:
    """The front end loads its filter from pspy's sitecustomize: a Python
    command line that skips it would run unfiltered."""
    if not argv or not os.path.basename(argv[0]).startswith("python"):
        return
    for arg in argv[1:]:
        if not arg.startswith("-") or arg in ("-m", "-c") or arg == "--":
            break
        if arg in UNSAFE_PYTHON_FLAGS or (arg[1:2] != "-" and any(f[1] in arg[1:] for f in UNSAFE_PYTHON_FLAGS)):
            raise ConfigError(f"front end {' '.join(argv)!r}: {arg} would skip pspy's sitecustomize or its "
                              "environment, and with them the front end's seccomp filter; remove it")


def options_for(req: Request) -> Options:
    """Command-line flags over pspy.toml over defaults."""
    cfg = config.load(req.app_dir)
    script = req.script if req.script is not None else cfg.get("script")
    if script is not None:
        norm = posixpath.normpath(script)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ConfigError(f"--script {script!r} must be a path inside the app folder")
        if not os.path.isfile(os.path.join(req.app_dir, norm)):
            raise ConfigError(f"--script {os.path.join(req.app_dir, norm)}: no such file in the app")
        script = norm
    front_end = list(req.front_end or cfg.get("front_end", []))
    check_front_end(front_end)
    for principal, names in cfg.get("env", {}).items():
        unsafe = [n for n in names if n.startswith(UNSAFE_ENV_PREFIXES)]
        if unsafe:
            raise ConfigError(f"env.{principal} passes {', '.join(unsafe)}: variables that change how Python "
                              "or the loader starts could run code before the principal's seccomp filter; "
                              "refused")
    rootless = req.namespaces and os.geteuid() != 0
    if rootless and (req.uid_base is not None or req.gid_base is not None):
        raise ConfigError("--uid-base/--gid-base need root: rootless, every principal runs under your "
                          "own uid and gid")
    files = [os.path.abspath(f) for f in (req.files or cfg.get("files", []))]
    for f in files:
        if not os.path.lexists(f):
            raise ConfigError(f"--files {f}: no such file or folder")
    jail_dir = req.jail or cfg.get("jail")
    if rootless and not jail_dir:
        raise ConfigError(f"rootless mode needs a jail folder of yours: give --jail DIR (the default, "
                          f"{DEFAULT_JAIL}, is for root)")
    if rootless:
        uid_base, gid_base = os.getuid(), os.getgid()
    else:
        uid_base = req.uid_base if req.uid_base is not None else cfg.get("uid_base", DEFAULT_UID_BASE)
        gid_base = req.gid_base if req.gid_base is not None else cfg.get("gid_base", DEFAULT_GID_BASE)
    return Options(
        # Not made absolute here: a relative jail would be built under the
        # current folder (often the checkout); check_jail_path refuses it.
        jail=jail_dir or DEFAULT_JAIL,
        uid_base=uid_base, gid_base=gid_base, rootless=rootless,
        front_end=front_end,
        env={k: list(v) for k, v in cfg.get("env", {}).items()},
        seccomp=dict(cfg.get("seccomp", {})), learn=req.learn,
        front_end_perms=dict(cfg.get("perms", {}).get(FRONT_END_NAME, {})),
        front_end_group=cfg.get("group", {}).get(FRONT_END_NAME),
        front_end_extra_groups=list(cfg.get("extra_groups", {}).get(FRONT_END_NAME, [])),
        exclude=list(cfg.get("exclude", [])),
        landlock=cfg.get("landlock", {}).get("enabled", True),
        landlock_execute={k: list(v) for k, v in cfg.get("landlock", {}).get("execute", {}).items()},
        shared_tmp=cfg.get("tmp", {}).get("shared", False),
        databases=list(cfg.get("databases", [])),
        limits=dict(cfg.get("limits", {})),
        script=script, files=files, interpreter=sys.executable,
        app_name=os.path.basename(os.path.normpath(req.app_dir)),
        rpc_timeout=float(cfg.get("rpc_timeout", DEFAULT_RPC_TIMEOUT)),
        max_frame=cfg.get("max_frame", DEFAULT_MAX_FRAME),
        log_max_bytes=cfg.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES),
        log_keep=cfg.get("log_keep", DEFAULT_LOG_KEEP),
        debug=cfg.get("debug", False) or os.environ.get("PSPY_DEBUG") == "1",
        mode="namespaces" if req.namespaces else "chroot",
        auto_ids=(not rootless and req.uid_base is None and req.gid_base is None
                  and "uid_base" not in cfg and "gid_base" not in cfg))


def build(req: Request, say=print) -> Plan:
    """Everything up to a ready jail with its plan; starts nothing."""
    req.app_dir = os.path.abspath(req.app_dir)
    if not os.path.isdir(req.app_dir):
        raise ConfigError(f"{req.app_dir}: app folder not found")
    options = options_for(req)
    manifest = discover(req.app_dir, exclude=options.exclude)   # pure: decorator mistakes show even without root
    for w in manifest.warnings:
        say(f"pspy: warning: {w}")
    if not manifest.providers and not options.databases:
        raise PspyError(f"{req.app_dir}: no @pspy.service found and no database shared with grants; "
                        "nothing to separate")
    if os.geteuid() != 0 and not options.rootless:
        raise PspyError("bootstrap in chroot mode needs root (it creates the principals' files, "
                        "chroots and changes uids); run it with sudo, or use --namespaces, which "
                        "works without root (all principals then run under your uid)")
    check_app_sources(manifest, options)
    jail.check_jail_path(options.jail, req.app_dir)   # first: nothing is read from a jail it refuses
    previous = None
    if os.path.exists(plan_path(options.jail)):
        try:
            previous = Plan.load(options.jail)
        except PspyError:
            previous = None
    jail.check_trusted(options.jail)
    if (previous and (supervisor_alive(previous) or app_processes(previous))) or \
            (os.path.isdir(options.jail) and jail_processes(options.jail)):
        raise PspyError(f"the app in {options.jail} is running; run 'pspy stop --jail {options.jail}' first")
    if options.rootless:
        # No ids to allocate: every principal is the caller. The host-wide id
        # registry is root's and is neither read nor written.
        if previous is not None and not previous.rootless:
            raise PspyError(f"{options.jail} was bootstrapped by root; a rootless bootstrap cannot reuse it")
        plan = build_plan(manifest, options, previous)
        _build_jail(plan, say)
        return plan
    with registry.locked() as jails:
        plan = _plan_with_free_ids(manifest, options, previous, jails)
        _build_jail(plan, say)
        registry.record(plan, jails)
    return plan


def check_app_sources(manifest: Manifest, options: Options) -> None:
    """Refuse, before anything is built, what the app folder holds that the
    jail would turn into silence (a perms pattern matching nothing) or into
    a provider's traceback at start (a module no principal may read)."""
    app_root = manifest.app_root
    patterns = [(pattern, spec.location) for provider in manifest.providers.values()
                for pattern, spec in provider.perms.items()]
    patterns += [(pattern, f"pspy.toml perms.{FRONT_END_NAME}") for pattern in options.front_end_perms]
    for pattern, where in patterns:
        link = _symlink_on_the_way(app_root, pattern)
        if link is not None:
            raise DiscoveryError([(where, f"perms {pattern!r} goes through {link}, a symlink of the app (to "
                                          f"{os.readlink(os.path.join(app_root, link))}); perms are never "
                                          "followed through a link, so it would match nothing: name the real "
                                          "path or replace the link by a folder")])
    if options.rootless:
        return   # every principal is the caller, who owns the app's files
    given = [rel for pattern, _ in patterns for rel in jail.match_pattern(app_root, pattern)]
    unreadable = []
    for rel in python_files(app_root, options.exclude):
        if rel == options.script or any(rel == g or rel.startswith(g + "/") for g in given):
            continue   # run by root, or owned by the principal its perms name
        why = _unreadable_by_others(app_root, rel)
        if why:
            unreadable.append(f"{rel} ({why})")
    if unreadable:
        # The jail keeps what others may not read root-only (jail.app_mode).
        raise PspyError(f"no principal can read {', '.join(unreadable)}: principals import the app's modules "
                        "as themselves, not as root; make them readable by others (chmod o+r, folders o+x) "
                        "or, if no principal imports them, list them in pspy.toml's exclude")


def _symlink_on_the_way(app_root: str, pattern: str) -> str | None:
    """The first symlink of the app a perms pattern would have to walk
    through (a folder it names or globs before its last part), if any."""
    parts = [p for p in pattern.rstrip("/").split("/") if p and p != "."]
    for depth in range(1, len(parts)):
        for rel in jail.match_pattern(app_root, "/".join(parts[:depth])):
            if os.path.islink(os.path.join(app_root, rel)):
                return rel
    return None


def _unreadable_by_others(app_root: str, rel: str) -> str | None:
    """Why an app file is out of a principal's reach in the jail, if it is."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        mode = os.stat(os.path.join(app_root, folder)).st_mode
        if not mode & 0o001:
            return f"folder {folder} is {oct(stat.S_IMODE(mode))}"
    mode = os.stat(os.path.join(app_root, rel)).st_mode
    return None if mode & 0o004 else f"mode {oct(stat.S_IMODE(mode))}"


ID_BLOCK = 100


def _plan_with_free_ids(manifest, options: Options, previous: Plan | None, jails: dict) -> Plan:
    """The plan, with ids no host account, other jail or outside process uses.

    Explicit bases are checked and refused on conflict; default ones move up
    in blocks of 100 until free (a re-bootstrap keeps its earlier block).
    """
    if options.auto_ids:
        candidates = [(DEFAULT_UID_BASE + k * ID_BLOCK, DEFAULT_GID_BASE + k * ID_BLOCK) for k in range(200)]
        if previous is not None:
            candidates.insert(0, (previous.uid_base, previous.gid_base))
    else:
        candidates = [(options.uid_base, options.gid_base)]
    problems: list[str] = []
    policies: dict = {}   # the seccomp policies do not depend on ids: compiled once
    for uid_base, gid_base in candidates:
        plan = build_plan(manifest, dataclasses.replace(options, uid_base=uid_base, gid_base=gid_base), previous,
                          policies)
        try:
            check_ids_free(plan)
        except PlanError as e:
            problems = [str(e)]
            continue
        problems = registry.conflicts(plan, jails)
        if not problems:
            return plan
    if not options.auto_ids:
        raise PlanError("no safe ids for this app: " + "; ".join(problems) +
                        "; choose another --uid-base/--gid-base")
    last = candidates[-1]
    raise PlanError(f"no safe ids for this app: each block of {ID_BLOCK} ids from uid {DEFAULT_UID_BASE}/gid "
                    f"{DEFAULT_GID_BASE} to uid {last[0] + ID_BLOCK - 1}/gid {last[1] + ID_BLOCK - 1} is taken "
                    f"by a host account, a running process or one of the {len(jails)} jails in "
                    f"{registry.REGISTRY} (the last block: {'; '.join(problems)}). A jail holds its ids "
                    "for as long as its folder exists: remove the folders of jails you no longer use, "
                    "or give --uid-base/--gid-base")


def _build_jail(plan: Plan, say) -> None:
    # Which cgroup hierarchy holds each controller the limits need, decided
    # now: a limit this host cannot enforce fails the bootstrap, not a start.
    from .sandbox.cgroup import hierarchies
    plan.cgroups = hierarchies(plan)
    jail.prepare_root(plan)
    staging = jail.stage_app(plan)
    try:
        if plan.script:
            say(f"pspy: running set-up script {plan.script} in the jail")
            run_script(plan, plan.script, cwd=staging.jail_path)
        jail.carry_over_data(plan, staging)
        if plan.databases:
            from .data.grants import check_against_schemas
            check_against_schemas(plan, staging.path)
        changes, warnings = jail.plan_ownership(plan, staging.path, carried=staging.carried_rels())
        jail.apply_ownership(staging.path, changes)
        jail.commit_app(plan, staging)
    except BaseException:
        jail.discard(staging)
        raise
    for w in warnings:
        say(f"pspy: warning: {w}")
    first = not os.path.exists(plan_path(plan.jail))
    jail.write_plan(plan)
    if first and not any((p.seccomp or {}).get("learn") for p in plan.principals):
        # Which host files an app needs shows only in a run, and seeing it
        # takes pspy learn's listener on every syscall: too slow for every
        # start, so a new jail points there once.
        say(f"pspy: a new jail: a host file a principal needs but is not in its view fails there as 'not "
            f"found'; 'pspy learn {plan.app_source} -- WORKLOAD' lists those it looked for")
    from .sandbox import landlock
    landlock.write_rules(plan)
    from .private_dirs import make_private_dirs
    make_private_dirs(plan)   # chroot mode: each principal's HOME and TMPDIR, Landlock or not
    # What analyze finds in the jail as built. A provider that may write a
    # file but not its folder bootstraps cleanly and then fails every write:
    # said here; the rest are counted, for pspy analyze to show.
    from .analyze import report
    found = report(plan)["findings"]
    for finding in found:
        if finding["id"] == "write-file-not-folder":
            say(f"pspy: warning: {finding['reason']}")
    serious = [f for f in found if f["severity"] in ("critical", "high")]
    if serious:
        say(f"pspy: analyze finds {len(serious)} serious finding(s) (critical or high): "
            f"pspy analyze --jail {plan.jail}")


def run_foreground(plan: Plan, say=print) -> int:
    # Each line a principal logs is shown too, prefixed by its name (pspy
    # logs shows the same later, from the log files).
    width = prefix_width(p.name for p in plan.principals)
    sup = Supervisor(plan, say=say, echo=lambda name, line: say(format_lines(name, [line], width)[0]))
    sup.install_signal_handlers()
    try:
        sup.start_all()
        _announce(plan, say)
        say("pspy: running; Ctrl-C stops every principal")
        sup.run()
    finally:
        sup.stop_all()
        say("pspy: stopped")
    return 0


def run_detached(plan: Plan, say=print, announce: bool = True, ready_copies: bool = True) -> int:
    """Fork a supervisor that outlives this command; return once every provider answers."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the supervisor
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(log_path(plan, "supervisor"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        code = 0
        sup = Supervisor(plan, say=lambda m: print(m, flush=True), ready_copies=ready_copies)
        sup.install_signal_handlers()
        try:
            sup.start_all()
            os.write(write_fd, b"ok\n")
            os.close(write_fd)
            write_fd = -1
            sup.run()
        except BaseException as e:  # noqa: BLE001 - reported to the waiting parent
            code = 1
            if write_fd >= 0:
                os.write(write_fd, f"{e}\n".encode())
            elif not isinstance(e, KeyboardInterrupt):
                # A bug: everything stops, and supervisor.log says why (if the disk lets it).
                import traceback
                try:
                    traceback.print_exc()
                    print(f"pspy: the supervisor stops every principal after this unexpected error: {e!r}",
                          file=sys.stderr, flush=True)
                except OSError:
                    pass
        finally:
            sup.stop_all()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        answer = r.readline().decode(errors="replace").strip()
        if answer != "ok":
            rest = r.read().decode(errors="replace")
            raise PspyError(f"the app did not start: {answer}{rest}".rstrip())
    if announce:
        _announce(plan, say)
        say(f"pspy: running in the background (supervisor pid {pid}); "
            f"'pspy status --jail {plan.jail}' and 'pspy stop --jail {plan.jail}'")
    return 0


def _announce(plan: Plan, say) -> None:
    for p in plan.principals:
        say(f"pspy: {p.name:<12} uid {p.uid:<6} log {log_path(plan, p.name)}")
