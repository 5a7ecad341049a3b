"""Installed as ``sitecustomize`` on every principal's path (/.pspy/lib).

Python imports it at start-up, before the app: it names the process
``pspy:<principal>`` (what ps and top show), since exec resets the name
the launcher set with python-prctl. Writing /proc/self/comm is the same
PR_SET_NAME without importing anything (start-up time counts here); where
there is no /proc (chroot mode) python-prctl does it. It does nothing
outside pspy.
"""

import os

_principal = os.environ.get("PSPY_PRINCIPAL")
if _principal:
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
