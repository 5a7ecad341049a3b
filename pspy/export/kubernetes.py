"""``pspy export kubernetes APP_DIR``: the app as one Kubernetes Deployment,
one container per principal, from the plan bootstrap would make.

What it writes into ``--out``:
- ``Dockerfile``, ``app/``, ``plan.json``, ``wheels/``: the image every
  container runs (the app at /app, pspy installed, the plan at
  /.pspy/plan.json, owners and modes applied at build time by
  ``pspy.export.image``, each principal's initial data kept in
  /.pspy/seed/<principal>, readable by that principal alone);
- ``seccomp/<app>-<principal>.json``: each principal's OCI profile from the
  plan, which the kubelet finds as ``pspy/<app>-<principal>.json`` below its
  seccomp folder;
- ``kubernetes/``: the Deployment, a NetworkPolicy and the seccomp
  installer (a ConfigMap of the profiles and a DaemonSet that copies them
  onto every node);
- ``README.md``: the steps, in order.

How the plan becomes a pod:
- every principal is a container of the pod, with the plan's uid and gid
  (runAsUser, runAsGroup), no capabilities, no privilege escalation
  (no_new_privs), a read-only root filesystem and its own seccomp
  profile; providers are native sidecars (init containers that keep
  running), started before the front end and waited for until their
  socket accepts, as pspy's supervisor does;
- a provider's socket folder is an in-memory emptyDir of its own, mounted
  read-write into the provider and read-only into the principals that may
  call it (a read-only mount still lets a process connect to a socket in
  it, and keeps it from binding one there); the provider binds the
  plan's socket path itself (pspy.runtime does when no socket is handed
  over);
- each data folder (a perms path, a glob's folder) is a volume of its
  own, mounted read-write into its owner and into whoever the folder's
  mode bits let write, read-only into whoever they let read only
  (pspy/sharing.py's rule), and nowhere else; an init container fills it
  from the image's seed when it is empty;
- the plan's memory and cpus limits become the container's resource
  limits; other limits are rlimits set by ``pspy.export.container``.
Kubernetes checks the caller of a call exactly as pspy does: the containers
of a pod share one network namespace, so a Unix socket on a shared volume
connects them, and SO_PEERCRED gives the provider the caller's uid, which
names one principal because every container runs under its own uid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass

from .. import __version__
from ..errors import ConfigError, PspyError
from ..plan import STATE_DIR, Plan, PrincipalPlan
from ..sharing import READ_ONLY, READ_WRITE, access_of

KUBERNETES_MIN = "1.29"          # native sidecar containers (initContainers with restartPolicy: Always)
SECCOMP_FOLDER = "pspy"          # below the kubelet's seccomp folder: localhostProfile pspy/<file>
KUBELET_SECCOMP = "/var/lib/kubelet/seccomp"
IMAGE_PYTHON = "/usr/local/bin/python"   # the official python images' interpreter
SEED_DIR = f"{STATE_DIR}/seed"   # a principal's initial data in the image (pspy.export.image)
PLAN_IN_IMAGE = f"{STATE_DIR}/plan.json"
TMP_SIZE = "64Mi"                # each container's private /tmp, in memory
SOCKET_VOLUME_SIZE = "1Mi"
REQUESTS = {"cpu": "50m", "memory": "64Mi"}   # what a container asks for unless its limits are lower
MARKER = ".pspy-export-kubernetes"   # in --out: a folder this exporter may write over
GLOB_CHARS = "*?["
# A container's start: the plan's umask and rlimits, then the principal itself.
LAUNCH = ["python", "-s", "-m", "pspy.export.container"]
PROVIDER = ["python", "-s", "-m", "pspy.provider"]
# The startup probe of a provider: its socket accepts a connection.
SOCKET_PROBE = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def add_parser(sub) -> None:
    p = sub.add_parser("kubernetes", help="the app as a Kubernetes Deployment, one container per principal",
                       usage="pspy export kubernetes APP_DIR [--out DIR] [--image NAME] [--replicas N] "
                             "[--pip PACKAGE]... [--allow-egress] [--uid-base N] [--gid-base N]")
    p.add_argument("app_dir", metavar="APP_DIR")
    p.add_argument("--out", help="the folder to write (default: ./APP-kubernetes)")
    p.add_argument("--image", help="the image name the containers run (default: APP:VERSION of pspy)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--pip", action="append", default=[], metavar="PACKAGE",
                   help="a package the app needs, installed in the image (repeat; the app's "
                        "requirements.txt is installed too)")
    p.add_argument("--allow-egress", action="store_true",
                   help="let the pod connect out (the front end needs to); providers without network "
                        "are then held by their seccomp profiles alone")
    p.add_argument("--uid-base", type=int)
    p.add_argument("--gid-base", type=int)


def run(args) -> int:
    from .common import plan_for_export
    if args.replicas < 0:
        raise ConfigError(f"--replicas {args.replicas}: expected 0 or more")
    plan = plan_for_export(args.app_dir, uid_base=args.uid_base, gid_base=args.gid_base, jail="/",
                           interpreter=IMAGE_PYTHON, mode="namespaces")
    app = k8s_name(plan.app_name, "the app")
    out = os.path.abspath(args.out or f"{app}-kubernetes")
    image = args.image or f"{app}:{__version__}"
    export = build(plan, plan.app_source, image=image, replicas=args.replicas, allow_egress=args.allow_egress,
                   pip=args.pip)
    write(export, plan.app_source, out)
    for w in export.warnings:
        print(f"pspy: warning: {w}")
    print(f"pspy: wrote {out}: build the image {image} there, install the seccomp profiles on the nodes, "
          f"then apply the manifests; {os.path.join(out, 'README.md')} gives the commands")
    return 0


# --- names ----------------------------------------------------------------------

def k8s_name(name: str, what: str) -> str:
    """``name`` as a DNS label (lower case, digits, '-'), as Kubernetes wants
    container, volume and object names."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")
    if not label:
        raise ConfigError(f"{what} {name!r} has no letter or digit to name it by in Kubernetes")
    return label


def _names(plan: Plan) -> dict[str, str]:
    names: dict[str, str] = {}
    for p in plan.principals:
        label = k8s_name(p.name, "principal")
        clash = [other for other, taken in names.items() if taken == label]
        if clash:
            raise ConfigError(f"principals {clash[0]!r} and {p.name!r} both become {label!r} in Kubernetes "
                              "(names there are lower case); rename one")
        names[p.name] = label
    return names


# --- data folders -------------------------------------------------------------------

@dataclass(frozen=True)
class DataVolume:
    """One data folder of a principal, a volume of its own in the pod."""
    owner: str           # principal
    rel: str             # folder, relative to the app
    mode: int            # the perms mode bootstrap gives it
    location: str        # where its perms were declared
    pattern: str         # the perms pattern it comes from


def data_volumes(plan: Plan, app_root: str) -> list[DataVolume]:
    """Each principal's data folders, as volumes: a perms path, or for a glob
    the folder above its first wildcard. ``app_root`` is the app as it will
    be in the image (a file there cannot be a volume). Raises ConfigError
    naming every path that cannot become one."""
    problems: list[str] = []
    found: dict[str, DataVolume] = {}
    for principal in plan.principals:
        for perm in principal.perms:
            parts = [part for part in perm.pattern.rstrip("/").split("/") if part]
            fixed: list[str] = []
            for part in parts:
                if any(c in part for c in GLOB_CHARS):
                    break
                fixed.append(part)
            rel = "/".join(fixed)
            where = f"perms {perm.pattern!r} of {principal.name} ({perm.location})"
            if not rel:
                problems.append(f"{where}: its matches lie at the app's top, and a volume there would hide "
                                "the app; put the data in a folder of its own (e.g. 'data/')")
                continue
            links = [os.path.join(*fixed[:i + 1]) for i in range(len(fixed))
                     if os.path.islink(os.path.join(app_root, *fixed[:i + 1]))]
            if links:
                problems.append(f"{where}: {links[0]} is a symlink; a volume is mounted on a real folder")
                continue
            path = os.path.join(app_root, rel)
            if os.path.lexists(path) and not os.path.isdir(path):
                problems.append(f"{where}: {rel} is a file, and a volume is a folder; give {principal.name} "
                                "a folder of its own for its data")
                continue
            earlier = found.get(rel)
            if earlier is not None and earlier.owner != principal.name:
                problems.append(f"{where}: its folder {rel} is also {earlier.owner}'s ({earlier.location}); "
                                "in a pod each folder is one volume, mounted with one owner's rights")
                continue
            if earlier is None:
                found[rel] = DataVolume(principal.name, rel, perm.mode, perm.location, perm.pattern)
    volumes = []
    for vol in sorted(found.values(), key=lambda v: v.rel):
        outer = [o for o in found.values() if vol.rel.startswith(o.rel + "/")]
        if any(o.owner != vol.owner for o in outer):
            o = next(o for o in outer if o.owner != vol.owner)
            problems.append(f"perms {vol.pattern!r} of {vol.owner} ({vol.location}): {vol.rel} lies inside "
                            f"{o.rel}, {o.owner}'s ({o.location}); data folders of two principals must not "
                            "nest, since each is mounted as a whole")
        elif not outer:
            volumes.append(vol)   # one of a principal's folders inside another of its own goes with it
    if problems:
        raise ConfigError("cannot export to Kubernetes:\n  " + "\n  ".join(problems))
    return volumes


def access(plan: Plan, who: PrincipalPlan, volume: DataVolume) -> str | None:
    """READ_WRITE, READ_ONLY or None: how ``who`` has ``volume`` mounted,
    as its folder's mode bits say (sharing.access_of, the rule namespace
    mode mounts by); bootstrap gives a folder search wherever it gives read."""
    owner = plan.principal(volume.owner)
    if who.name == owner.name:
        return READ_WRITE
    folder_mode = volume.mode | ((volume.mode & 0o444) >> 2)
    return access_of(plan, who, owner, os.stat_result((stat.S_IFDIR | folder_mode,) + (0,) * 9))


# --- the manifests ------------------------------------------------------------------

@dataclass
class Export:
    files: dict[str, str]        # path inside --out -> text
    deployment: dict
    network_policy: dict
    installer: list[dict]        # the seccomp profiles' ConfigMap and the DaemonSet that installs them
    warnings: list[str]


def profile_file(app: str, label: str) -> str:
    return f"{app}-{label}.json"


def build(plan: Plan, app_root: str, *, image: str, replicas: int = 1, allow_egress: bool = False,
          pip: list[str] = ()) -> Export:
    """Everything the export writes, from the plan; ``app_root`` is the app
    folder the image is built from."""
    if not plan.front_end.argv:
        raise ConfigError(f"{os.path.join(app_root, 'pspy.toml')}: no front end command; the front end's "
                          "container runs it: set front_end = [\"python\", \"app.py\"] (or yours) there")
    if plan.rootless:
        raise ConfigError("a rootless plan has one uid for every principal; the Kubernetes export needs "
                          "the uids of a plan made as root")
    warnings: list[str] = []
    app = k8s_name(plan.app_name, "the app")
    names = _names(plan)
    volumes = data_volumes(plan, app_root)
    labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "pspy"}
    fs_group = max([*plan.groups.values(), *(p.gid for p in plan.principals)]) + 1
    profiles: dict[str, str] = {}
    for p in plan.principals:
        if p.seccomp:
            profiles[profile_file(app, names[p.name])] = json.dumps(p.seccomp["profile"], indent=2) + "\n"
        else:
            warnings.append(f"{p.name} has no seccomp filter in the plan (seccomp='none'): its container runs "
                            "under the runtime's default profile"
                            + ("" if p.network else ", which lets it open inet sockets: in the pod its "
                               "network=False is held by nothing but the NetworkPolicy"))
    if plan.files:
        warnings.append(f"the plan's extra files ({', '.join(plan.files)}) are not in the image: add them "
                        "to the Dockerfile")

    pod_volumes: list[dict] = []
    sock_volume: dict[str, str] = {}
    for p in plan.providers:
        sock_volume[p.name] = f"sock-{names[p.name]}"
        pod_volumes.append({"name": sock_volume[p.name],
                            "emptyDir": {"medium": "Memory", "sizeLimit": SOCKET_VOLUME_SIZE}})
    data_volume: dict[DataVolume, str] = {}
    for vol in volumes:
        name = f"data-{names[vol.owner]}-{k8s_name(vol.rel, 'data folder')}"[:60].strip("-")
        while name in data_volume.values():   # two folders that differ only in case or punctuation
            name += "-x"
        data_volume[vol] = name
        pod_volumes.append({"name": data_volume[vol], "emptyDir": {}})
    for p in plan.principals:
        pod_volumes.append({"name": f"tmp-{names[p.name]}", "emptyDir": {"medium": "Memory",
                                                                         "sizeLimit": TMP_SIZE}})

    def mounts(p: PrincipalPlan) -> list[dict]:
        out = [{"name": f"tmp-{names[p.name]}", "mountPath": "/tmp"}]
        for provider in plan.providers:
            if provider.name == p.name:
                out.append({"name": sock_volume[p.name], "mountPath": os.path.dirname(p.socket)})
            elif p.name in plan.callers_of(provider):
                out.append({"name": sock_volume[provider.name], "mountPath": os.path.dirname(provider.socket),
                            "readOnly": True})
        for vol in volumes:
            how = access(plan, p, vol)
            if how is not None:
                out.append({"name": data_volume[vol], "mountPath": f"{plan.app_dir}/{vol.rel}",
                            **({"readOnly": True} if how == READ_ONLY else {})})
        return out

    def security(p: PrincipalPlan) -> dict:
        if p.seccomp:
            profile = {"type": "Localhost",
                       "localhostProfile": f"{SECCOMP_FOLDER}/{profile_file(app, names[p.name])}"}
        else:
            profile = {"type": "RuntimeDefault"}
        return {"runAsUser": p.uid, "runAsGroup": p.gid, "runAsNonRoot": True, "privileged": False,
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": profile}

    def env(p: PrincipalPlan) -> list[dict]:
        out = [{"name": "PSPY_PRINCIPAL", "value": p.name}, {"name": "PSPY_PLAN", "value": PLAN_IN_IMAGE},
               {"name": "HOME", "value": "/tmp"}, {"name": "LANG", "value": "C.UTF-8"},
               {"name": "PYTHONNOUSERSITE", "value": "1"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
               {"name": "PYTHONUNBUFFERED", "value": "1"}]
        # Only the variables the plan names reach a principal, as in pspy:
        # from one Secret, each container its own keys.
        out += [{"name": var, "valueFrom": {"secretKeyRef": {"name": f"{app}-env", "key": var,
                                                             "optional": True}}} for var in p.env]
        return out

    def container(p: PrincipalPlan) -> dict:
        argv = PROVIDER if p.kind == "provider" else list(p.argv)
        spec = {"name": names[p.name], "image": image, "imagePullPolicy": "IfNotPresent",
                "command": [*LAUNCH, *argv], "workingDir": plan.app_dir, "env": env(p),
                "securityContext": security(p), "resources": resources(p.limits),
                "volumeMounts": mounts(p)}
        if p.kind == "provider":
            # A native sidecar: the front end starts once every provider's
            # socket accepts, and a provider that dies is restarted.
            spec["restartPolicy"] = "Always"
            spec["startupProbe"] = {"exec": {"command": ["python", "-s", "-c", SOCKET_PROBE, p.socket]},
                                    "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 300}
        return spec

    def seed(p: PrincipalPlan) -> dict | None:
        own = [vol for vol in volumes if vol.owner == p.name]
        if not own:
            return None
        steps = []
        for vol in own:
            src = shlex.quote(f"{SEED_DIR}/{p.name}/{vol.rel}")
            dst = shlex.quote(f"{plan.app_dir}/{vol.rel}")
            # Only into an empty volume: a persistent one keeps what the app wrote.
            steps.append(f'if [ -d {src} ] && [ -z "$(ls -A {dst})" ]; then '
                         f"find {src} -mindepth 1 -maxdepth 1 -exec cp -a {{}} {dst}/ \\; ; fi")
        sec = security(p)
        sec["seccompProfile"] = {"type": "RuntimeDefault"}   # sh, ls, find and cp: not what the profile is for
        return {"name": f"seed-{names[p.name]}", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "set -e\n" + "".join(step + "\n" for step in steps)], "securityContext": sec,
                "resources": {"requests": dict(REQUESTS), "limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": data_volume[vol], "mountPath": f"{plan.app_dir}/{vol.rel}"}
                                 for vol in own]}

    seeds = [s for s in (seed(p) for p in plan.principals) if s is not None]
    taken = [c["name"] for c in seeds] + [names[p.name] for p in plan.principals]
    clashes = sorted({n for n in taken if taken.count(n) > 1})
    if clashes:
        raise ConfigError(f"two containers would be named {', '.join(clashes)} (a principal's own and another's "
                          "seed-<principal> init container); rename the principal")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "labels": dict(labels),
                     "annotations": {"pspy/export": f"pspy {__version__} export kubernetes of {plan.app_name}"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "automountServiceAccountToken": False,   # no principal talks to the API server
                    "enableServiceLinks": False,             # nor learns other services' addresses
                    "shareProcessNamespace": False,          # each container its own PID namespace
                    "securityContext": {"runAsNonRoot": True, "fsGroup": fs_group,
                                        "fsGroupChangePolicy": "OnRootMismatch",
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": seeds + [container(p) for p in plan.providers],
                    "containers": [container(plan.front_end)],
                    "volumes": pod_volumes,
                },
            },
        },
    }
    network_policy, note = _network_policy(plan, app, labels, allow_egress)
    if note:
        warnings.append(note)
    installer = _seccomp_installer(app, image, profiles, labels)
    files = {f"seccomp/{name}": text for name, text in profiles.items()}
    files["kubernetes/deployment.yaml"] = to_yaml([deployment])
    files["kubernetes/networkpolicy.yaml"] = to_yaml([network_policy])
    files["kubernetes/seccomp-installer.yaml"] = to_yaml(installer)
    plan_in_image = dataclasses.replace(plan, app_source=plan.app_dir)
    files["plan.json"] = plan_in_image.to_json()
    files["Dockerfile"] = dockerfile(plan, app_root, pip)
    files["wheels/README"] = ("Put a pspy wheel here (scripts/wheel.sh in pspy's repository builds one) if "
                              f"pspy-privsep=={__version__} is not on your package index.\n")
    files["README.md"] = readme(plan, app, image, sorted(profiles), [p.name for p in plan.principals if p.env])
    return Export(files=files, deployment=deployment, network_policy=network_policy, installer=installer,
                  warnings=warnings)


def resources(limits: dict) -> dict:
    """The container's requests and limits: the plan's memory (bytes) and
    cpus (a share of CPUs) are the container's own cgroup limits, as pspy
    sets them; a request is never above its limit."""
    out_limits: dict[str, str] = {}
    requests = dict(REQUESTS)
    if "memory" in limits:
        out_limits["memory"] = str(limits["memory"])
        if limits["memory"] < 64 << 20:
            requests["memory"] = out_limits["memory"]
    if "cpus" in limits:
        millis = max(1, round(limits["cpus"] * 1000))
        out_limits["cpu"] = f"{millis}m"
        if millis < 50:
            requests["cpu"] = out_limits["cpu"]
    out = {"requests": requests}
    if out_limits:
        out["limits"] = out_limits
    return out


def _network_policy(plan: Plan, app: str, labels: dict, allow_egress: bool) -> tuple[dict, str | None]:
    """A NetworkPolicy selects pods, never containers: one rule for the whole
    pod. Egress is denied unless a provider needs the network or
    --allow-egress says the front end does; providers without network are
    held in either case by their seccomp profiles, which refuse every
    socket but AF_UNIX (the plan derives that from network=False)."""
    networked = [p.name for p in plan.providers if p.network]
    open_egress = allow_egress or bool(networked)
    note = None
    if networked:
        note = (f"{', '.join(networked)} need{'s' if len(networked) == 1 else ''} the network, and a "
                "NetworkPolicy applies to the whole pod: egress is open to every container; the providers "
                "without network are held by their seccomp profiles alone")
    why = ("egress open: " + (f"{', '.join(networked)} need the network" if networked else "--allow-egress")
           if open_egress else "no egress: no provider needs the network, nor (without --allow-egress) "
           "the front end; answers to connections made to the pod still flow")
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": f"{app}-egress", "labels": dict(labels), "annotations": {"pspy/why": why}},
              "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": app}},
                       "policyTypes": ["Egress"], "egress": [{}] if open_egress else []}}
    return policy, note


def _seccomp_installer(app: str, image: str, profiles: dict[str, str], labels: dict) -> list[dict]:
    """A ConfigMap of the profiles and a DaemonSet that copies them into the
    kubelet's seccomp folder on every node (write to a temporary name, then
    rename: the kubelet never reads half a profile)."""
    name = f"{app}-seccomp"
    # Only pspy's folder of the kubelet's seccomp folder is mounted: the
    # installer runs the app's image as root, and must not be able to
    # rewrite other workloads' profiles.
    target = "/host"
    script = (f"set -e; for f in /profiles/*.json; do "
              f'cp "$f" {target}/.new && mv {target}/.new "{target}/$(basename "$f")"; done; '
              "echo installed; exec sleep 2147483647")
    installer_labels = dict(labels, **{"app.kubernetes.io/name": name})
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": dict(labels)},
                  "data": dict(profiles)}
    daemon_set = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "labels": installer_labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": installer_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "install", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", script],
                        # root, for the kubelet's root-owned folder; nothing more
                        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"memory": "32Mi"}},
                        "volumeMounts": [{"name": "profiles", "mountPath": "/profiles", "readOnly": True},
                                         {"name": "kubelet-seccomp", "mountPath": "/host"}]}],
                    "volumes": [{"name": "profiles", "configMap": {"name": name}},
                                {"name": "kubelet-seccomp",
                                 "hostPath": {"path": f"{KUBELET_SECCOMP}/{SECCOMP_FOLDER}",
                                              "type": "DirectoryOrCreate"}}],
                },
            },
        },
    }
    return [config_map, daemon_set]


def dockerfile(plan: Plan, app_root: str, pip: list[str]) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [f"# The image of {plan.app_name} for Kubernetes, written by pspy export kubernetes.",
             "# Build it in this folder: docker build -t IMAGE .",
             f"FROM python:{python}-slim",
             "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
             "# pspy: from your package index, or from a wheel put in wheels/.",
             "COPY wheels/ /tmp/pspy-wheels/",
             f'RUN pip install --find-links /tmp/pspy-wheels "pspy-privsep=={__version__}" '
             "&& rm -rf /tmp/pspy-wheels"]
    if pip:
        lines.append("RUN pip install " + " ".join(shlex.quote(p) for p in pip))
    if os.path.isfile(os.path.join(app_root, "requirements.txt")):
        lines += ["COPY app/requirements.txt /tmp/requirements.txt",
                  "RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt"]
    lines += ["COPY app/ /app/", f"COPY plan.json {PLAN_IN_IMAGE}", f"WORKDIR {plan.app_dir}"]
    if plan.script:
        lines += ["# The set-up script, as root, before owners and modes are applied (as pspy bootstrap runs it).",
                  f"RUN python -s {shlex.quote(plan.script)}"]
    lines += ["# Owners and modes from the plan, each principal's data moved to its seed folder, and",
              "# an account for each principal (its extra groups come from /etc/group).",
              f"RUN python -s -m pspy.export.image {PLAN_IN_IMAGE}",
              "USER 65534:65534"]
    return "\n".join(lines) + "\n"


def readme(plan: Plan, app: str, image: str, profiles: list[str], with_env: list[str]) -> str:
    env_names = sorted({v for p in plan.principals for v in p.env})
    secret = (f"kubectl create secret generic {app}-env " + " ".join(f"--from-literal={v}=..." for v in env_names)
              if env_names else "(no variables: the plan passes none)")
    return f"""# {plan.app_name} on Kubernetes

Written by `pspy export kubernetes` (pspy {__version__}). Needs Kubernetes {KUBERNETES_MIN} or later
(providers are native sidecar containers), nodes of this machine's architecture (the seccomp profiles
name it), and a network plugin that enforces NetworkPolicy for the egress rule to hold.

1. Build and push the image, from this folder: `docker build -t {image} . && docker push {image}`
   (if `pspy-privsep=={__version__}` is not on your package index, put its wheel in `wheels/` first).
2. Install the seccomp profiles on every node: `kubectl apply -f kubernetes/seccomp-installer.yaml`, then
   `kubectl rollout status daemonset/{app}-seccomp`. Or copy `seccomp/*.json` into
   `{KUBELET_SECCOMP}/{SECCOMP_FOLDER}/` on each node yourself. A container whose profile is missing does
   not start (the kubelet says CreateContainerError), so nothing runs unfiltered.
3. The variables the plan passes ({', '.join(env_names) or 'none'}), each only to the principals that name it
   ({', '.join(with_env) or 'none'}): {secret}
4. `kubectl apply -f kubernetes/deployment.yaml -f kubernetes/networkpolicy.yaml`

Profiles: {', '.join(profiles) or 'none'}. Data lives in emptyDir volumes: it lasts as long as the pod, and
each replica has its own. For data that outlives the pod, replace a `data-*` volume by a
PersistentVolumeClaim (one replica, or storage that several nodes may mount). What the export carries
over from pspy's own supervisor, and what it does not: docs/kubernetes.md in pspy's source.
"""


def to_yaml(docs: list[dict]) -> str:
    """YAML for ``docs`` (plain dicts, lists, strings, numbers, booleans),
    one document each. Strings are plain only where no YAML reader could
    take them for anything else; multi-line text is a literal block."""
    return "".join("---\n" + "\n".join(_yaml_lines(doc, 0)) + "\n" for doc in docs)


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
            return value
        return json.dumps(value)   # a JSON string is a YAML double-quoted scalar
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _literal(value) -> bool:
    return (isinstance(value, str) and "\n" in value[:-1] and value.endswith("\n") and not value.endswith("\n\n")
            and not value.startswith((" ", "\n")) and all(c == "\n" or c.isprintable() for c in value))


def _yaml_lines(value, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []

    def nested(v) -> bool:
        return isinstance(v, (dict, list)) and bool(v)

    def inline(v) -> str:
        if isinstance(v, dict):
            return "{}"
        if isinstance(v, list):
            return "[]"
        return _scalar(v)

    if isinstance(value, dict):
        for key, v in value.items():
            k = _scalar(str(key))
            if nested(v):
                out.append(f"{pad}{k}:")
                out.extend(_yaml_lines(v, indent + 2))
            elif _literal(v):
                out.append(f"{pad}{k}: |")
                out.extend(f"{pad}  {line}" if line else "" for line in v[:-1].split("\n"))
            else:
                out.append(f"{pad}{k}: {inline(v)}")
    else:
        for item in value:
            if nested(item):
                sub = _yaml_lines(item, indent + 2)
                out.append(f"{pad}- {sub[0][indent + 2:]}")
                out.extend(sub[1:])
            elif _literal(item):
                out.append(f"{pad}- |")
                out.extend(f"{pad}  {line}" if line else "" for line in item[:-1].split("\n"))
            else:
                out.append(f"{pad}- {inline(item)}")
    return out


# --- writing ------------------------------------------------------------------------

def write(export: Export, app_root: str, out: str) -> None:
    """Write the export into ``out``: a new or empty folder, or one this
    exporter wrote before (its files are replaced, app/ as a whole)."""
    from ..jail import _copy_app
    app_root = os.path.realpath(app_root)
    real_out = os.path.realpath(out)
    if real_out == app_root or real_out.startswith(app_root + os.sep):
        raise ConfigError(f"--out {out} is inside the app folder {app_root}; the image would hold the export "
                          "of itself: choose a folder outside it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise ConfigError(f"--out {out}: the folder holds files pspy export kubernetes did not write; "
                          "choose a new or empty folder")
    os.makedirs(out, exist_ok=True)
    from .common import write_file
    write_file(out, MARKER, b"written by pspy export kubernetes; it may write over this folder again\n", 0o644)
    for folder in ("app", "seccomp", "kubernetes"):
        path = os.path.join(out, folder)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    os.mkdir(os.path.join(out, "app"), 0o755)
    try:
        _copy_app(app_root, os.path.join(out, "app"))
    except PspyError as e:
        raise ConfigError(str(e).replace("refusing to bootstrap; nothing in the jail was changed",
                                         "refusing to export")) from None
    for rel, text in export.files.items():
        write_file(out, rel, text.encode(), 0o644)
