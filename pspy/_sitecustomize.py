"""Installed as ``sitecustomize`` on every principal's path (/.pspy/lib).

Python imports it at start-up, before the app. For a principal it:
- loads the principal's seccomp filter (compiled at bootstrap), before any app code
  runs (so neither the app nor whatever it imports runs unfiltered, and the
  launcher's own needs never widen the policy); if the filter cannot be
  loaded the process exits rather than run without it;
- shuts itself in with Landlock to its plan's grants (pspy/_landlock.py);
- makes it non-dumpable (exec resets that), so that no process of the same
  uid can ptrace it or take its descriptors (through python-prctl's C
  module: its Python wrapper costs a millisecond to import);
- names the process ``pspy:<principal>`` (what ps and top show), since
  exec resets the name. Writing
  /proc/self/comm is the same PR_SET_NAME without importing anything (start-up
  time counts here); where there is no /proc (chroot mode) python-prctl does it.
It does nothing outside pspy. It runs at every principal start, so it
imports next to nothing: a principal without a filter (PSPY_SECCOMP=none,
set by pspy from the plan; a child the principal starts with another value
runs under the filter it inherited anyway) never reads the plan, and one
with a filter finds it, compiled, in the file PSPY_SECCOMP names (no JSON
to import). Learning, and a jail bootstrapped before those files existed,
take the policy from the plan. In namespace mode this file's bytecode is
compiled into the principal's root when that is built (sandbox/mount.py).
"""

import os

_principal = os.environ.get("PSPY_PRINCIPAL")
if _principal:
    def _load_filter(principal):
        import json
        with open(os.environ.get("PSPY_PLAN", "/.pspy/plan.json")) as f:
            plan = json.load(f)
        mine = [p for p in plan["principals"] if p["name"] == principal]
        policy = mine[0].get("seccomp") if mine else None
        if policy and policy.get("learn"):
            from pspy import _filter
            _filter.learn()   # pspy learn: every call recorded and let through
        elif policy:
            import sys
            from pspy import _filter
            # The program bootstrap compiled; denials are reported in the
            # principal's log (its stderr), once per call site.
            _filter.install(policy, sys.stderr, plan.get("app_dir", "/app"))

    _name = f"pspy:{_principal}"[:15]
    try:
        with open("/proc/self/comm", "w") as _comm:
            _comm.write(_name)
    except OSError:
        try:
            import prctl
            prctl.set_name(_name)
        except Exception:  # noqa: BLE001 - a name is cosmetic; never stop the app for it
            pass

    # Not dumpable: no other process of the same uid (rootless, every
    # principal) may ptrace it, read its memory or take its descriptors
    # (pidfd_getfd); exec made it dumpable again.
    try:
        import _prctl
        _prctl.prctl(_prctl.PR_SET_DUMPABLE, 0)
    except BaseException as _e:  # noqa: BLE001
        os.write(2, f"pspy: {_principal}: cannot make itself non-dumpable, not starting: {_e}\n".encode())
        os._exit(126)
    # A process this principal started (subprocess) carries PSPY_CONFINED,
    # set below once its own barriers were up: it runs under the Landlock
    # domain and the filter it inherited, which it cannot leave or loosen.
    # No one else can set it: pspy builds a principal's environment, and
    # refuses to pass PSPY_ variables through (bootstrap.UNSAFE_ENV_PREFIXES).
    # An outer filter (a container's, systemd's) is no reason to skip: pspy's
    # own layers go on top of it.
    _inherited = os.environ.get("PSPY_CONFINED") == _principal
    # Landlock next, before the filter (which need not allow Landlock's own
    # calls) and before any app code: bootstrap wrote the rules
    # (pspy/sandbox/landlock.py) and pspy names them in PSPY_LANDLOCK; a
    # missing file stops the principal, as a missing filter does.
    _rules = os.environ.get("PSPY_LANDLOCK")
    if _rules and not _inherited:
        try:
            import sys
            from pspy import _landlock
            _landlock.install(_rules, sys.stderr)
        except BaseException as _e:  # noqa: BLE001 - never run a principal without its barrier
            os.write(2, f"pspy: {_principal}: cannot apply its Landlock rules, not starting: {_e}\n".encode())
            os._exit(126)
    _seccomp = os.environ.get("PSPY_SECCOMP")
    if _seccomp != "none":
        try:
            if _seccomp and os.path.exists(_seccomp):   # a file of its own (pspy/jail.py write_filters)
                import sys
                from pspy import _filter
                _filter.install_file(_seccomp, sys.stderr)
            else:
                _load_filter(_principal)
        except BaseException as _e:  # noqa: BLE001 - never run a principal without its filter
            os.write(2, f"pspy: {_principal}: cannot load its seccomp filter, not starting: {_e}\n".encode())
            os._exit(126)
    os.environ["PSPY_CONFINED"] = _principal

