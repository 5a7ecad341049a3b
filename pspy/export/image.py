"""``python -s -m pspy.export.image PLAN``: the Kubernetes export's image, made ready.

Run as root by the Dockerfile the export writes, once the app is in /app
and its set-up script has run:
- owners and modes of the app from the plan, exactly as bootstrap gives
  them in a jail (jail.plan_ownership, jail.apply_ownership): the app
  root's and read-only to principals, each data path its owner's;
- each data folder (kubernetes.data_volumes) moved to the owner's seed
  folder, /.pspy/seed/<principal>/<folder>, which only that principal may
  enter: in the pod a volume is mounted on the folder's place, empty, and
  the owner's init container copies the seed into it; every other
  container finds an empty, root-owned folder there;
- an account in /etc/passwd for each principal and a line in /etc/group
  for each group of the plan, its members the principals that have it as
  an extra group: a container runtime adds a user's groups from the
  image's /etc/group (Kubernetes has no per-container supplementary
  groups), so extra groups reach the principals that way.
"""

from __future__ import annotations

import json
import os
import sys

from ..errors import PspyError
from ..jail import apply_ownership, plan_ownership
from ..plan import Plan
from .kubernetes import SEED_DIR, data_volumes, k8s_name


def prepare(plan: Plan, app_root: str, seed_root: str = SEED_DIR, etc: str = "/etc", say=print) -> None:
    volumes = data_volumes(plan, app_root)
    changes, warnings = plan_ownership(plan, app_root)
    for w in warnings:
        say(f"pspy: warning: {w}")
    apply_ownership(app_root, changes)
    os.makedirs(seed_root, mode=0o755, exist_ok=True)
    for vol in volumes:
        owner = plan.principal(vol.owner)
        seed = os.path.join(seed_root, owner.name)
        if not os.path.isdir(seed):
            os.mkdir(seed, 0o700)
            os.chown(seed, owner.uid, owner.gid)
        os.chmod(seed, 0o700)   # the owner's alone: the seed is its data
        source = os.path.join(app_root, vol.rel)
        if os.path.isdir(source) and not os.path.islink(source):
            target = os.path.join(seed, vol.rel)
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.rename(source, target)
        os.makedirs(source, mode=0o755, exist_ok=True)   # the mount point: empty, root's
        os.chown(source, 0, 0)
        os.chmod(source, 0o755)
    write_accounts(plan, etc)


def write_accounts(plan: Plan, etc: str) -> None:
    """Append the principals and groups to ``etc``/passwd and ``etc``/group;
    an id the image already gives to someone else is an error."""
    passwd_path, group_path = os.path.join(etc, "passwd"), os.path.join(etc, "group")
    with open(passwd_path) as f:
        passwd = [line.split(":") for line in f.read().splitlines() if line.count(":") >= 3]
    with open(group_path) as f:
        groups = [line.split(":") for line in f.read().splitlines() if line.count(":") >= 3]
    app = k8s_name(plan.app_name, "the app")
    users = {p.name: f"{app}-{k8s_name(p.name, 'principal')}"[:32] for p in plan.principals}
    problems = []
    for p in plan.principals:
        for fields in passwd:
            if fields[2] == str(p.uid) and fields[0] != users[p.name]:
                problems.append(f"uid {p.uid} of {p.name} is {fields[0]!r} in {passwd_path}")
    for name, gid in plan.groups.items():
        for fields in groups:
            if fields[2] == str(gid) and fields[0] != name:
                problems.append(f"gid {gid} of group {name} is {fields[0]!r} in {group_path}")
    if problems:
        raise PspyError("the image's accounts clash with the plan's ids: " + "; ".join(problems) +
                        "; export again with other --uid-base/--gid-base")
    known_users = {fields[0] for fields in passwd}
    known_groups = {fields[0] for fields in groups}
    with open(passwd_path, "a") as f:
        for p in plan.principals:
            if users[p.name] not in known_users:
                f.write(f"{users[p.name]}:x:{p.uid}:{p.gid}:pspy principal {p.name}:/nonexistent:"
                        "/usr/sbin/nologin\n")
    with open(group_path, "a") as f:
        for name, gid in plan.groups.items():
            if name not in known_groups:
                members = ",".join(users[p.name] for p in plan.principals if name in p.extra_groups)
                f.write(f"{name}:x:{gid}:{members}\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pspy.export.image PLAN", file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            plan = Plan.from_dict(json.load(f))
        prepare(plan, plan.app_dir)
    except (PspyError, OSError, ValueError) as e:
        print(f"pspy.export.image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
