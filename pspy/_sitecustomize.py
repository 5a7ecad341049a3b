"""Installed as ``sitecustomize`` on every principal's path (/.pspy/lib).

Python imports it at start-up, before the app: it names the process
``pspy:<principal>`` (what ps and top show), since exec resets the name
the launcher set. It does nothing outside pspy.
"""

import os

_principal = os.environ.get("PSPY_PRINCIPAL")
if _principal:
    try:
        import prctl
        prctl.set_name(f"pspy:{_principal}"[:15])
    except Exception:  # noqa: BLE001 - a name is cosmetic; never stop the app for it
        pass
