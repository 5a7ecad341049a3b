"""``pspy export seccomp PRINCIPAL``: the principal's compiled filter as an OCI profile."""

from __future__ import annotations

import json
import os
import sys

from ..errors import PspyError
from ..plan import DEFAULT_JAIL, Plan


def add_parser(sub) -> None:
    p = sub.add_parser("seccomp", help="a principal's seccomp policy as an OCI profile (docker, podman, runc)",
                       usage="pspy export seccomp PRINCIPAL [--jail DIR]")
    p.add_argument("principal")
    p.add_argument("--jail", default=DEFAULT_JAIL)


def run(args) -> int:
    plan = Plan.load(os.path.abspath(args.jail))
    policy = plan.principal(args.principal).seccomp
    if policy and policy.get("learn"):
        raise PspyError(f"{plan.jail} was bootstrapped by pspy learn: {args.principal} has no policy to export; "
                        "bootstrap it with the learned profiles first")
    if not policy:
        raise PspyError(f"{args.principal} runs without a seccomp filter (seccomp='none'); nothing to export")
    # The compiled policy, for this machine's architecture: docker run
    # --security-opt seccomp=FILE reads it as it is.
    sys.stdout.write(json.dumps(policy["profile"], indent=2) + "\n")
    return 0
