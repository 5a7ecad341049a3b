"""The ``pspy`` command. User mistakes end in one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import analyze as analyze_mod
from . import running
from .errors import PspyError
from .plan import DEFAULT_JAIL, Plan


def _split_dashdash(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspy", description="Privilege-separate a Python application.")
    parser.add_argument("--version", action="version", version=f"pspy {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bootstrap", help="build the jail and run the app split into principals",
                       usage="pspy bootstrap APP_DIR [options] [-- FRONT_END_CMD ...]")
    b.add_argument("app_dir", metavar="APP_DIR")
    b.add_argument("--jail", help=f"jail folder (default: pspy.toml's, else {DEFAULT_JAIL})")
    b.add_argument("--script", help="set-up script in the app, run as root in the jail after copying")
    b.add_argument("--files", nargs="+", default=[], metavar="PATH",
                   help="extra host files copied into the jail at the same path")
    b.add_argument("--uid-base", type=int, help="first uid for principals (default 40000)")
    b.add_argument("--gid-base", type=int, help="first gid for groups (default 40000)")
    b.add_argument("--detach", action="store_true", help="return once every provider answers")
    b.add_argument("--no-run", action="store_true", help="build the jail and plan, start nothing")
    b.add_argument("--namespaces", action="store_true",
                   help="each principal in its own user, mount, PID, IPC, UTS, cgroup (and network) namespaces")

    st = sub.add_parser("status", help="per principal: pid, ids, uptime, restarts, last exit, whether it answers")
    st.add_argument("--jail", default=DEFAULT_JAIL)
    st.add_argument("--format", choices=("text", "json"), default="text")
    sp = sub.add_parser("stop", help="stop every process of the app")
    sp.add_argument("--jail", default=DEFAULT_JAIL)

    lg = sub.add_parser("logs", help="show (and follow) the principals' logs",
                        usage="pspy logs [PRINCIPAL] [--jail DIR] [--follow] [--lines N]",
                        description="The last lines of a principal's log (across its rotated files), or with no "
                                    "PRINCIPAL of every principal's and the supervisor's, one log after the other. "
                                    "When several logs are shown each line is prefixed by its principal "
                                    "('Bank | ...'); one principal's log is shown bare. Control characters "
                                    "are shown escaped. --follow then prints new lines as they come, across "
                                    "rotations, until Ctrl-C (exit 0) or until the supervisor that was running "
                                    "exits; if the app is not running it waits for it.")
    lg.add_argument("principal", nargs="?", metavar="PRINCIPAL", help="one principal (default: all)")
    lg.add_argument("--jail", default=DEFAULT_JAIL)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                    help="lines of each log to show first (default 50)")

    e = sub.add_parser("exec", help="run a command as a principal, in its jail",
                       usage="pspy exec [--jail DIR] PRINCIPAL -- CMD ...")
    e.add_argument("--jail", default=DEFAULT_JAIL)
    e.add_argument("principal")

    a = sub.add_parser("analyze", help="what each principal can read, write and call")
    a.add_argument("jail_pos", nargs="?", metavar="JAIL", help="jail folder (same as --jail)")
    a.add_argument("--jail", default=None)
    a.add_argument("--format", choices=("text", "json", "dot"), default="text",
                   help="text (findings first), json (complete; schema in docs/analyze.schema.json) or "
                        "dot (a Graphviz graph of principals, their data and calls)")
    a.add_argument("--expect", metavar="FILE",
                   help="a TOML file of expectations: exit 0 if all hold, 1 naming each that does not")
    a.add_argument("--live", action="store_true",
                   help="verify the report from inside each running principal: try the reads, writes, calls "
                        "and connections it claims, allowed and forbidden; exit 1 on any disagreement")
    a.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the text output (auto: on a terminal, unless NO_COLOR is set)")
    a.add_argument("--app-files", default=None, metavar="DIR",
                   help="app folder inside the jail (default: the plan's, /app)")
    a.add_argument("--uid", type=int, help="analyse this uid instead of the plan's principals")
    a.add_argument("--gid", type=int, help="with --uid: its gid")
    a.add_argument("--groups", default="", help="with --uid: comma-separated extra gids")
    a.add_argument("--include-seccomp", action="store_true",
                   help="also each principal's seccomp filter: profile, source, default action, allowed syscalls")

    le = sub.add_parser("learn", help="run the app and a workload, and write a seccomp profile per principal",
                        usage="pspy learn APP_DIR [--jail DIR] [--namespaces] -- WORKLOAD_CMD ...")
    le.add_argument("app_dir", metavar="APP_DIR")
    le.add_argument("--jail", help=f"jail folder (default: pspy.toml's, else {DEFAULT_JAIL})")
    le.add_argument("--namespaces", action="store_true", help="learn in namespace mode")

    from .export import FORMATS
    x = sub.add_parser("export", help="a principal's policy in a format other tools read (seccomp, systemd, "
                                      "kubernetes)", usage="pspy export {seccomp,systemd,kubernetes} ...")
    xs = x.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for module in FORMATS.values():
        module.add_parser(xs)
    return parser


def _version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pspy-privsep")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def text_colour(choice: str) -> bool:
    from .analyze.text import colour_wanted
    return colour_wanted(choice, sys.stdout)


def _rootless_owner(jail: str) -> int | None:
    """The uid whose rootless jail this looks like (only to word an error)."""
    try:
        with open(os.path.join(jail, ".pspy", "plan.json")) as f:
            data = json.load(f)
        return int(data["uid_base"]) if data.get("rootless") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _app_files(path: str) -> str:
    """An app folder inside the jail: absolute there, and never leaving it."""
    norm = os.path.normpath("/" + path.lstrip("/"))
    if ".." in path.split("/"):
        raise PspyError(f"--app-files {path!r} must not contain '..': it is a folder inside the jail")
    return norm


def _status_line(r: dict) -> str:
    """One principal of ``pspy status``; ", answers" or ", not answering" ends a provider's."""
    ids = f"uid {r['uid']} gid {r['gid']}" + (f" groups {','.join(map(str, r['groups']))}" if r["groups"] else "")
    parts = [f"pid {r['pid']}" + (f" up {_duration(r['uptime_s'])}" if r.get("uptime_s") is not None else "")
             if r["running"] else "stopped"]
    if r["restarts"]:
        parts.append(f"{r['restarts']} restart{'s' if r['restarts'] != 1 else ''}")
    if r.get("last_exit"):
        parts.append(f"last {r['last_exit']['reason']}")
    if r.get("failures_in_a_row"):
        parts.append(f"{r['failures_in_a_row']} failed starts in a row")
    if r["kind"] == "provider":
        copy = r.get("ready_copy")
        if copy:
            parts.append(f"ready copy pid {copy['pid']}" if copy["ready"] else f"next copy pid {copy['pid']} starting")
        parts.append("answers" if r.get("answers") else "not answering")
    return f"{r['name']:<12} {r['kind']:<9} {ids:<22} " + ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, tail = _split_dashdash(argv)
    args = _parser().parse_args(head)
    try:
        return _dispatch(args, tail)
    except PspyError as e:
        print(f"pspy: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # A filesystem problem with a path the user gave (a jail that is a
        # file, a folder they may not read): the path and the reason suffice.
        where = f"{e.filename}: " if e.filename else ""
        print(f"pspy: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args, tail: list[str]) -> int:
    if args.command == "bootstrap":
        from . import bootstrap
        req = bootstrap.Request(app_dir=args.app_dir, jail=args.jail, script=args.script, files=args.files,
                                uid_base=args.uid_base, gid_base=args.gid_base, front_end=tail,
                                namespaces=args.namespaces)
        plan = bootstrap.build(req)
        print(f"pspy: jail ready in {plan.jail}: {', '.join(p.name for p in plan.principals)}")
        if args.no_run:
            return 0
        if not plan.front_end.argv:
            print("pspy: no front end command (give one after '--' or as front_end in pspy.toml); "
                  "running the providers only")
        return bootstrap.run_detached(plan) if args.detach else bootstrap.run_foreground(plan)

    if args.command == "learn":
        from . import learn
        return learn.run(args.app_dir, jail=args.jail, namespaces=args.namespaces, workload=tail)

    if args.command == "analyze":
        if args.live and args.expect:
            raise PspyError("--live and --expect check different things; run them one after the other")
        if args.live and args.format == "dot":
            raise PspyError("--live prints text or json, not dot")
        if args.expect and args.format != "text":
            raise PspyError("--expect prints the expectations that do not hold, as text; drop --format")
        jail = os.path.abspath(args.jail or args.jail_pos or DEFAULT_JAIL)
        if args.uid is not None:
            if args.gid is None:
                raise PspyError("--uid needs --gid")
            try:
                groups = tuple(int(g) for g in args.groups.split(",") if g.strip())
            except ValueError:
                raise PspyError(f"--groups {args.groups!r}: expected comma-separated numeric gids") from None
            data = analyze_mod.report_for_ids(jail, _app_files(args.app_files or "/app"), args.uid, args.gid, groups)
        else:
            plan = Plan.load(jail)
            if args.app_files:
                plan.app_dir = _app_files(args.app_files)
            data = analyze_mod.report(plan)
        if args.live:
            from .analyze import live
            if "app" not in data:
                raise PspyError("--live needs the plan's principals; it does not go with --uid")
            result = live.verify(plan, data)
            sys.stdout.write(analyze_mod.format_json(result) if args.format == "json" else live.format_live(result))
            return 1 if result["disagreements"] else 0
        if args.expect:
            from .analyze import expect
            if "app" not in data:
                raise PspyError("--expect needs the plan's principals; it does not go with --uid")
            violations = expect.check(expect.load(args.expect), data, args.expect)
            for line in violations:
                print(f"pspy analyze: expectation not met: {line}")
            if not violations:
                print(f"pspy analyze: every expectation of {args.expect} holds")
            return 1 if violations else 0
        if args.format == "json":
            out = analyze_mod.format_json(data)
        elif args.format == "dot":
            out = analyze_mod.format_dot(data)
        else:
            out = analyze_mod.format_text(data, colour=text_colour(args.color),
                                          include_seccomp=args.include_seccomp)
        sys.stdout.write(out)
        return 0

    if args.command == "export":
        from .export import FORMATS
        return FORMATS[args.format].run(args)

    if os.geteuid() == 0:
        from .errors import JailError
        from .jail import check_trusted
        try:
            check_trusted(args.jail)   # root acts on what the plan names: it must be root's
        except JailError as e:
            owner = _rootless_owner(args.jail)
            if owner is not None:
                raise PspyError(f"{args.jail} is a rootless app of uid {owner}: run 'pspy {args.command}' as "
                                "that user (root does not act on jails others control)") from None
            raise e
    plan = Plan.load(os.path.abspath(args.jail))
    if args.command == "status":
        rows = running.status(plan)
        alive = running.supervisor_alive(plan)
        if args.format == "json":
            print(json.dumps({"app": plan.app_name, "jail": plan.jail, "mode": plan.mode,
                              "supervisor": alive, "principals": rows,
                              "lost_writes": running.lost_writes(plan)}, indent=2))
            return 0 if alive else 3
        print(f"{plan.app_name} in {plan.jail}: "
              f"{'running, supervisor pid ' + str(alive) if alive else 'supervisor not running'}")
        for r in rows:
            print("  " + _status_line(r))
        for line in running.describe_lost_writes(running.lost_writes(plan)):
            print("  " + line)
        return 0 if alive else 3

    if args.command == "stop":
        was = running.stop(plan)
        print(f"pspy: {'stopped' if was else 'was not running'}: {plan.app_name} in {plan.jail}")
        return 0

    if args.command == "logs":
        from . import logs
        if args.lines < 0:
            raise PspyError(f"--lines {args.lines}: expected a number of lines, 0 or more")
        # Root's logs are root only; a rootless jail's are its user's (root was refused above).
        if plan.rootless and os.geteuid() != plan.uid_base:
            raise PspyError(f"{plan.jail} holds a rootless app of uid {plan.uid_base}; run pspy logs as that user")
        if not plan.rootless and os.geteuid() != 0:
            raise PspyError(f"pspy logs needs root: {plan.jail} was bootstrapped by root")
        return logs.show(plan, args.principal, lines=args.lines, follow=args.follow)

    if args.command == "exec":
        if not tail:
            raise PspyError("pspy exec needs a command after '--'")
        if plan.rootless:
            if os.geteuid() != plan.uid_base:
                raise PspyError(f"{plan.jail} holds a rootless app of uid {plan.uid_base}; "
                                "run pspy exec as that user")
        elif os.geteuid() != 0:
            raise PspyError(f"pspy exec needs root: {plan.jail} was bootstrapped by root")
        from .sandbox.spawn import run_as_principal
        return run_as_principal(plan, plan.principal(args.principal), tail)
    raise PspyError(f"unknown command {args.command}")
