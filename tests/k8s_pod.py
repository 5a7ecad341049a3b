"""Run a pod of an exported Deployment on this machine with runc, the OCI
runtime under containerd and CRI-O, as near to a kubelet as a test gets.

``run_pod`` starts ``python tests/k8s_pod.py pod SPEC.json`` in new mount,
network, IPC, UTS and PID namespaces: the pod's (what a pod's sandbox
holds; its containers share its network, IPC and UTS namespaces, and the
PID namespace makes every container end with the pod). There it makes the
Deployment's volumes (an emptyDir with medium Memory is a tmpfs; each left
root:fsGroup 2777, as the kubelet leaves an emptyDir with an fsGroup), runs
the init containers that run to completion, starts the sidecars (the
providers) and waits until each one's socket accepts (its startup probe),
then runs the probes asked for, each a fresh container from the spec of the
container it names (what `kubectl exec` would run there, with another
command and, to play an intruder, another uid), and prints their output.

Each container is an OCI bundle that runc runs, made from the container's
spec as the kubelet and containerd make one: its own mount and PID
namespaces, a read-only root (readOnlyRootFilesystem), the volumeMounts
(readOnly ones read-only), runAsUser and runAsGroup with the fsGroup and
the groups the image's /etc/group gives the user (containerd's Merge
policy), no capabilities, no_new_privs (allowPrivilegeEscalation: false),
and its Localhost seccomp profile, which runc loads itself before exec.

What it does not do: no image (the host's system and Python, bound
read-only, stand in for it), no cgroup limits, no user namespace, no
RuntimeDefault profile (such a container runs unfiltered here), no
NetworkPolicy.
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
MS_NOSUID, MS_NODEV = 2, 4
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
_libc = ctypes.CDLL(None, use_errno=True)


def run_pod(deployment: dict, image: str, seccomp_dir: str, workdir: str, probes: list[dict],
            timeout: float = 90) -> dict:
    """Run the pod; returns {"probes": [{rc, stdout, stderr}...], "limits": {sidecar: /proc/PID/limits},
    "logs": {container: output}}. ``image`` holds app/, .pspy/ and etc/ (pspy.export.image's output)."""
    spec_file = os.path.join(workdir, "pod.json")
    with open(spec_file, "w") as f:
        json.dump({"deployment": deployment, "image": image, "seccomp_dir": seccomp_dir, "workdir": workdir,
                   "probes": probes, "id": f"pspy-k8s-{os.getpid()}-{time.monotonic_ns()}"}, f)
    proc = subprocess.run(["unshare", "--mount", "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child",
                           "--mount-proc", "--propagation", "private", "--",
                           sys.executable, __file__, "pod", spec_file],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"the pod failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tmpfs(path):
    if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0777") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def pod(spec: dict) -> dict:
    workdir = spec["workdir"]
    pod_spec = spec["deployment"]["spec"]["template"]["spec"]
    fs_group = pod_spec["securityContext"]["fsGroup"]
    volumes = {}
    for vol in pod_spec["volumes"]:
        path = os.path.join(workdir, "volumes", vol["name"])
        os.makedirs(path)
        if vol["emptyDir"].get("medium") == "Memory":
            _tmpfs(path)
        os.chown(path, 0, fs_group)
        os.chmod(path, 0o2777)
        volumes[vol["name"]] = path
    counter = iter(range(1000))
    started: list[str] = []

    def start(container, command=None, user=None):
        name = f"{spec['id']}-{container['name']}-{next(counter)}"
        bundle = os.path.join(workdir, "bundles", name)
        os.makedirs(os.path.join(bundle, "rootfs"))
        for path in SYSTEM:
            if os.path.islink(path):   # /lib64 -> usr/lib64 and the like, as the image has them
                os.symlink(os.readlink(path), os.path.join(bundle, "rootfs", path.lstrip("/")))
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(_config(spec, container, volumes, fs_group, command, user), f)
        started.append(name)
        return name, subprocess.Popen(["runc", "run", "--bundle", bundle, name], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    logs: dict[str, str] = {}
    limits: dict[str, str] = {}
    sidecars = []
    results = []
    try:
        for container in pod_spec.get("initContainers", []):
            name, proc = start(container)
            if container.get("restartPolicy") != "Always":
                out, err = proc.communicate(timeout=30)
                logs[container["name"]] = out + err
                if proc.returncode != 0:
                    raise RuntimeError(f"init container {container['name']} failed ({proc.returncode}): {out}{err}")
                continue
            sidecars.append((container["name"], name, proc))
            socket_path = container["startupProbe"]["exec"]["command"][-1]
            _wait_accepting(_host_path(container, volumes, socket_path), proc, container["name"])
            limits[container["name"]] = _limits_of(name)
        by_name = {c["name"]: c for c in pod_spec.get("initContainers", []) + pod_spec["containers"]}
        for probe in spec["probes"]:
            name, proc = start(by_name[probe["container"]], probe["command"], probe.get("user"))
            try:
                out, err = proc.communicate(timeout=probe.get("timeout", 20))
            except subprocess.TimeoutExpired:
                subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
                out, err = proc.communicate(timeout=10)
                err += "\n(the probe timed out and was killed)"
            results.append({"rc": proc.returncode, "stdout": out, "stderr": err})
    finally:
        for container_name, name, proc in sidecars:
            subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            logs[container_name] = out + err
        for name in started:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True)
    return {"probes": results, "limits": limits, "logs": logs}


def _limits_of(name):
    state = json.loads(subprocess.run(["runc", "state", name], capture_output=True, text=True, check=True).stdout)
    with open(f"/proc/{state['pid']}/limits") as f:
        return f.read()


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


def _bind(source, destination, readonly):
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "nosuid", "nodev", "ro" if readonly else "rw"]}


def _config(spec, container, volumes, fs_group, command, user):
    """The OCI runtime config for ``container``, as containerd makes it from the pod spec."""
    sec = container["securityContext"]
    uid = user if user is not None else sec["runAsUser"]
    env = [f"{e['name']}={e['value']}" for e in container.get("env", []) if "value" in e]
    env.append(f"PATH={os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin")
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}]
    mounts += [_bind(path, path, True) for path in SYSTEM if not os.path.islink(path)]
    # The interpreter, the venv and pspy (installed editable) stand in for the image's.
    mounts += [_bind(path, path, True) for path in sorted({os.path.realpath(p) for p in
                                                           (sys.base_prefix, sys.prefix, REPO)})]
    image = spec["image"]
    mounts += [_bind(os.path.join(image, "app"), "/app", True),
               _bind(os.path.join(image, ".pspy", "plan.json"), "/.pspy/plan.json", True),
               _bind(os.path.join(image, ".pspy", "seed"), "/.pspy/seed", True)]
    mounts += [_bind(volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))) for m in container["volumeMounts"]]
    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": sec["readOnlyRootFilesystem"]},
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": sec["runAsGroup"],
                     "additionalGids": [fs_group] + _image_groups(os.path.join(image, "etc"), uid)},
            "args": command or container["command"], "env": env, "cwd": container.get("workingDir", "/"),
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
            "noNewPrivileges": sec["allowPrivilegeEscalation"] is False,
        },
        "mounts": mounts,
        "linux": {
            # The pod's network, IPC and UTS namespaces are shared: not listed, runc keeps the caller's.
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    assert sec["capabilities"]["drop"] == ["ALL"]
    if sec["seccompProfile"]["type"] == "Localhost":
        name = sec["seccompProfile"]["localhostProfile"].split("/", 1)[1]
        with open(os.path.join(spec["seccomp_dir"], name)) as f:
            config["linux"]["seccomp"] = json.load(f)
    return config


def _image_groups(etc, uid):
    """The gids the image's /etc/group gives the user of ``uid`` (containerd adds them)."""
    with open(os.path.join(etc, "passwd")) as f:
        names = {line.split(":")[0] for line in f.read().splitlines() if line.split(":")[2:3] == [str(uid)]}
    out = []
    with open(os.path.join(etc, "group")) as f:
        for line in f.read().splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and set(fields[3].split(",")) & names:
                out.append(int(fields[2]))
    return out


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        print(json.dumps(pod(json.load(f))))
