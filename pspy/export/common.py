"""What every exporter of an app folder needs: the plan bootstrap would make,
without a jail.

Discovery and planning only (both pure): nothing is written, no id is
reserved, no root is needed. pspy.toml and the flags are read exactly as
``pspy bootstrap`` reads them (bootstrap.options_for), so an export and a
bootstrap of the same folder agree on every principal's policy.
"""

from __future__ import annotations

import dataclasses
import os

from ..bootstrap import Request, options_for
from ..discover import discover
from ..errors import ConfigError, PspyError
from ..plan import Plan, build_plan


def plan_for_export(app_dir: str, *, uid_base: int | None = None, gid_base: int | None = None, say=print,
                    **overrides) -> Plan:
    """The plan of ``app_dir`` as bootstrap would build it (chroot mode, as
    root); ``overrides`` replace fields of its Options (``jail``,
    ``interpreter``, ``mode``...), for where the exported app will run."""
    app_dir = os.path.abspath(app_dir)
    if not os.path.isdir(app_dir):
        raise ConfigError(f"{app_dir}: app folder not found")
    options = options_for(Request(app_dir=app_dir, uid_base=uid_base, gid_base=gid_base))
    options = dataclasses.replace(options, **overrides)
    manifest = discover(app_dir, exclude=options.exclude)
    for w in manifest.warnings:
        say(f"pspy: warning: {w}")
    if not manifest.providers:
        raise PspyError(f"{app_dir}: no @pspy.service found; nothing to export")
    return build_plan(manifest, options)
