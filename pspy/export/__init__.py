"""``pspy export``: a principal's policy, from the plan, in formats other tools read.

One module per format. Each has ``add_parser(subparsers)`` (its command line)
and ``run(args) -> int``. Exporters translate the plan's policy values; none
re-derives a part of a policy on its own.
"""

from . import kubernetes, seccomp, systemd

FORMATS = {"seccomp": seccomp, "systemd": systemd, "kubernetes": kubernetes}
