"""Run a pod of an exported Deployment on this machine, as near as one can
without a kubelet and a container runtime.

    python tests/k8s_pod.py pod SPEC.json       (under unshare --mount --net)
    python tests/k8s_pod.py container SPEC.json (under unshare --mount --pid --fork)

``run_pod`` (used by tests/test_export_kubernetes.py) starts ``pod`` in a
new mount and network namespace: the pod's, which every container shares,
as a pod's containers share one network namespace. There it makes the
Deployment's volumes (an emptyDir with medium Memory is a tmpfs, every
emptyDir root:fsGroup 2777 as the kubelet leaves it with an fsGroup), runs
the init containers that run to completion, starts the sidecars (the
providers) and waits for each one's socket to accept, then runs the probes
asked for, each a fresh container made from the spec of the container it
names (as `kubectl exec` would run in it), and prints what they printed.

Each container is a process in a mount and PID namespace of its own, built
as a runtime builds one from the spec: a tmpfs root holding the system
and Python read-only (the image), the prepared app at /app and the plan at
/.pspy/plan.json, the volumeMounts (readOnly ones read-only), its own
/proc; then the root made read-only (readOnlyRootFilesystem), chroot,
the capability bounding set emptied, groups (fsGroup, and the image's
/etc/group for the user, as containerd adds them), runAsGroup and
runAsUser, no_new_privs (allowPrivilegeEscalation: false), and last the
Localhost seccomp profile (as runc loads it: default action as the profile
says, no trap), then exec of the command.

What it does not do: no image (the host's system and Python stand in),
no overlay root, no cgroups (resource limits), no user namespace, no
RuntimeDefault profile (a RuntimeDefault container runs unfiltered here),
no NetworkPolicy.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
DEVICES = ("null", "zero", "random", "urandom")
_libc = ctypes.CDLL(None, use_errno=True)


def run_pod(deployment: dict, image: str, seccomp_dir: str, workdir: str, probes: list[dict],
            timeout: float = 60) -> dict:
    """Run the pod; returns {"probes": [{rc, stdout, stderr}...], "sidecars": {name: /proc limits text},
    "logs": {name: output}}. ``image`` holds app/, .pspy/ and etc/ (pspy.export.image's output)."""
    spec_file = os.path.join(workdir, "pod.json")
    with open(spec_file, "w") as f:
        json.dump({"deployment": deployment, "image": image, "seccomp_dir": seccomp_dir, "workdir": workdir,
                   "probes": probes}, f)
    # A PID namespace of its own too, the pod's: when the test ends it (a
    # timeout), every container in it ends with it.
    proc = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                           "--propagation", "private", "--",
                           sys.executable, __file__, "pod", spec_file],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"the pod failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the pod --------------------------------------------------------------------

def _mount(source, target, fstype=None, flags=0, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _bind(source, target, readonly):
    _mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _say(*args):
    print(*args, file=sys.stderr, flush=True)


def pod(spec: dict) -> dict:
    deployment, workdir = spec["deployment"], spec["workdir"]
    pod_spec = deployment["spec"]["template"]["spec"]
    fs_group = pod_spec["securityContext"]["fsGroup"]
    volumes = {}
    for vol in pod_spec["volumes"]:
        path = os.path.join(workdir, "volumes", vol["name"])
        os.makedirs(path)
        if vol["emptyDir"].get("medium") == "Memory":
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0777")
        os.chown(path, 0, fs_group)
        os.chmod(path, 0o2777)
        volumes[vol["name"]] = path
    logs: dict[str, str] = {}

    def start(container, command=None, user=None):
        cspec = _container_spec(spec, container, volumes, fs_group, command, user)
        path = os.path.join(workdir, f"{container['name']}-{time.monotonic_ns()}.json")
        with open(path, "w") as f:
            json.dump(cspec, f)
        return subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--",
                                 sys.executable, __file__, "container", path],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    sidecars = []
    limits = {}
    try:
        for container in pod_spec.get("initContainers", []):
            _say(f"pod: starting {container['name']}")
            proc = start(container)
            if container.get("restartPolicy") != "Always":
                out, err = proc.communicate(timeout=30)
                logs[container["name"]] = out + err
                if proc.returncode != 0:
                    raise RuntimeError(f"init container {container['name']} failed ({proc.returncode}): {err}")
                continue
            sidecars.append((container["name"], proc))
            socket_path = container["startupProbe"]["exec"]["command"][-1]
            host_socket = _host_path(container, volumes, socket_path)
            _wait_accepting(host_socket, proc, container["name"])
            # The provider itself: the child of the unshare process (PID 1 of its namespace).
            limits[container["name"]] = open(f"/proc/{_container_pid(proc)}/limits").read()
        by_name = {c["name"]: c for c in pod_spec.get("initContainers", []) + pod_spec["containers"]}
        results = []
        for probe in spec["probes"]:
            _say(f"pod: probe in {probe['container']}")
            proc = start(by_name[probe["container"]], probe["command"], probe.get("user"))
            try:
                out, err = proc.communicate(timeout=probe.get("timeout", 20))
            except subprocess.TimeoutExpired:
                out, err = _stop(proc)
                err += "\n(the probe timed out and was killed)"
            results.append({"rc": proc.returncode, "stdout": out, "stderr": err})
    finally:
        for name, proc in sidecars:
            out, err = _stop(proc)
            logs[name] = out + err
    return {"probes": results, "sidecars": limits, "logs": logs}


def _container_pid(proc):
    """The container's PID 1: the child of its unshare process."""
    kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
    return int(kids[0]) if kids else None


def _stop(proc):
    """End a container as the runtime does, by killing its PID 1 (every
    process of its PID namespace goes with it); returns what it printed."""
    pid = _container_pid(proc)
    if pid is not None:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return proc.communicate(timeout=10)


def _host_path(container, volumes, path):
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/"):
            return os.path.join(volumes[mount["name"]], path[len(mount["mountPath"]) + 1:])
    raise RuntimeError(f"{path} is on no volume of {container['name']}")


def _wait_accepting(path, proc, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(f"sidecar {name} ended ({proc.returncode}) before its socket accepted:\n{out}{err}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sidecar {name}: {path} did not accept within {timeout}s")


def _container_spec(spec, container, volumes, fs_group, command, user):
    sec = container["securityContext"]
    profile = None
    if sec["seccompProfile"]["type"] == "Localhost":
        name = sec["seccompProfile"]["localhostProfile"].split("/", 1)[1]
        profile = os.path.join(spec["seccomp_dir"], name)
    uid = user if user is not None else sec["runAsUser"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin"
    return {
        "root": os.path.join(spec["workdir"], "roots", f"{container['name']}-{time.monotonic_ns()}"),
        "image": spec["image"],
        "mounts": [{"source": volumes[m["name"]], "target": m["mountPath"], "readOnly": bool(m.get("readOnly"))}
                   for m in container["volumeMounts"]],
        "uid": uid, "gid": sec["runAsGroup"],
        "groups": [fs_group] + _image_groups(os.path.join(spec["image"], "etc"), uid),
        "no_new_privs": sec["allowPrivilegeEscalation"] is False,
        "read_only_root": sec["readOnlyRootFilesystem"],
        "capabilities_dropped": sec["capabilities"]["drop"] == ["ALL"],
        "profile": profile,
        "cwd": container.get("workingDir", "/"),
        "argv": command or container["command"],
        "env": env,
    }


def _image_groups(etc, uid):
    """The gids the image's /etc/group gives the user of ``uid``, as containerd adds them."""
    names = [line.split(":")[0] for line in open(os.path.join(etc, "passwd")).read().splitlines()
             if line.split(":")[2:3] == [str(uid)]]
    out = []
    for line in open(os.path.join(etc, "group")).read().splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and set(fields[3].split(",")) & set(names):
            out.append(int(fields[2]))
    return out


# --- one container ----------------------------------------------------------------

def container(spec: dict) -> None:
    # Everything the filter may refuse later is imported now.
    from pspy._native import lib
    from pspy.seccomp.compile import _build   # the profile as libseccomp builds it, without pspy's trap
    profile = None
    if spec["profile"]:
        with open(spec["profile"]) as f:   # read before the chroot hides the host
            profile = json.load(f)
    root = spec["root"]
    os.makedirs(root)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")

    def inside(path):
        return os.path.join(root, path.lstrip("/"))

    def bind_dir(source, target, readonly=True):
        os.makedirs(inside(target), exist_ok=True)
        _bind(source, inside(target), readonly)

    for path in SYSTEM:
        if os.path.islink(path):
            os.symlink(os.readlink(path), inside(path))
        elif os.path.isdir(path):
            bind_dir(path, path)
    for path in sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, REPO)}):
        bind_dir(path, path)   # the interpreter, the venv, and pspy (installed editable) stand in for the image's
    os.makedirs(inside("/dev"))
    for name in DEVICES:
        open(inside(f"/dev/{name}"), "w").close()
        _bind(f"/dev/{name}", inside(f"/dev/{name}"), False)
    bind_dir(os.path.join(spec["image"], "app"), "/app")
    for name in os.listdir(os.path.join(spec["image"], ".pspy")):
        source = os.path.join(spec["image"], ".pspy", name)
        if os.path.isdir(source):
            bind_dir(source, f"/.pspy/{name}")
        else:
            open(inside(f"/.pspy/{name}"), "w").close()
            _bind(source, inside(f"/.pspy/{name}"), True)
    for m in spec["mounts"]:
        bind_dir(m["source"], m["target"], m["readOnly"])
    os.makedirs(inside("/proc"))
    _mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV)
    if spec["read_only_root"]:
        _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir(spec["cwd"])
    if spec["capabilities_dropped"]:
        for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"dropping capability {cap} from the bounding set")
    os.setgroups(spec["groups"])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])   # from root: permitted and effective sets emptied
    if spec["no_new_privs"] and _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "setting no_new_privs")
    if profile is not None:
        # As the runtime loads it: the profile's own default action, no trap.
        ctx = _build(profile, trapping=False)
        rc = lib.seccomp_load(ctx)
        lib.seccomp_release(ctx)
        if rc != 0:
            raise OSError(-rc, "loading the seccomp profile")
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        spec = json.load(f)
    if mode == "pod":
        print(json.dumps(pod(spec)))
    else:
        container(spec)
