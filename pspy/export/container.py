"""``python -s -m pspy.export.container ARGV...``: a principal's container
start, what pspy's own spawn does before exec that a container runtime does not.

The Kubernetes export starts every principal through it. From the plan in
the image (PSPY_PLAN) and the principal's name (PSPY_PRINCIPAL) it sets:
- umask 077, so what a principal creates is its own unless it says
  otherwise (pspy's spawn does the same);
- the principal's rlimits (pspy/limits.py: cpu_seconds, memory as
  RLIMIT_DATA, open_files, file_size) but never RLIMIT_NPROC: the kernel
  counts it per uid over the whole node, and every replica of the pod on
  a node runs the principal under the same uid.
then execs ARGV. Only ever lowers limits: no privilege needed.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("pspy.export.container: usage: python -m pspy.export.container ARGV...", file=sys.stderr)
        return 2
    from ..errors import PspyError
    from ..limits import rlimits
    from ..plan import Plan
    from ..runtime import ENV_PLAN, ENV_PRINCIPAL
    name = os.environ.get(ENV_PRINCIPAL)
    plan_file = os.environ.get(ENV_PLAN)
    if not name or not plan_file:
        print(f"pspy.export.container: {ENV_PRINCIPAL} and {ENV_PLAN} must be set", file=sys.stderr)
        return 2
    try:
        with open(plan_file) as f:
            principal = Plan.from_dict(json.load(f)).principal(name)
    except (OSError, ValueError, KeyError, PspyError) as e:
        print(f"pspy.export.container: {plan_file}: cannot read the plan for {name}: {e}", file=sys.stderr)
        return 2
    os.umask(0o077)
    per_call = principal.isolation == "per_call"
    # rootless=True leaves RLIMIT_NPROC out (see above), nothing else.
    for which, soft, hard in rlimits(principal.limits, rootless=True, per_call=per_call):
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as e:
            print(f"pspy.export.container: {name}: cannot set rlimit {which} to {soft}: {e}", file=sys.stderr)
            return 2
    # The container runtime loaded this principal's exported profile
    # (seccompProfile: Localhost) before this process started, as runc does:
    # the runtime's check for its own filter (pspy/runtime.py) reads this.
    os.environ["PSPY_CONFINED"] = name
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"pspy.export.container: {name}: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
