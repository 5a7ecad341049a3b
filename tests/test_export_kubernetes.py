"""pspy export kubernetes: manifests the Kubernetes schemas accept, each
principal a locked-down container of its own, and callers still known by
their uid across the containers of a pod (tests/k8s_pod.py runs one)."""

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from conftest import ZOOBANK, pspy, write_app
from k8s_pod import run_pod
from pspy import seccomp
from pspy.export import kubernetes
from pspy.export.common import plan_for_export

# The newest Kubernetes whose schemas kubernetes-validate ships (1.37, current
# in December 2026), and the oldest the export supports (native sidecars).
KUBERNETES_VERSIONS = ("1.37", kubernetes.KUBERNETES_MIN)

SHOP = {
    "pspy.toml": """
        front_end = ["python", "app.py"]
        env = { web = ["SHOP_GREETING"] }
        """,
    "paths.py": """
        import os
        STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "store")
        """,
    "store.py": """
        import os
        import pspy
        from paths import STORE

        @pspy.service(service_provider="Store", group="StoreGroup", perms={"data/store/": 0o750}, callers=["web"],
                      limits={"memory": "256M", "cpus": 0.5, "open_files": 64})
        def put(key, value):
            with open(os.path.join(STORE, key), "w") as f:
                f.write(value)

        @pspy.service(service_provider="Store", callers=["web", "Reports"])
        def get(key):
            with open(os.path.join(STORE, key)) as f:
                return f.read()
        """,
    "reports.py": """
        import os
        import pspy
        import store
        from paths import STORE

        @pspy.service(service_provider="Reports", extra_groups=["StoreGroup"], callers=["web"])
        def count():
            return len(os.listdir(STORE))      # Store's folder, through StoreGroup's bits

        @pspy.service(service_provider="Reports", callers=["web"])
        def greeting():
            return store.get("greeting")       # from one provider's container to another's
        """,
    "fetcher.py": """
        import pspy

        @pspy.service(service_provider="Fetcher", network=True, callers=["web"])
        def ping():
            return "pong"
        """,
    "app.py": """
        import fetcher, reports, store
        print(store.get("greeting"), reports.count(), fetcher.ping())
        """,
    "data/store/greeting": "hello\n",
}


def export(app, out, *extra):
    proc = pspy("export", "kubernetes", str(app), "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    docs = {}
    for name in ("deployment", "networkpolicy", "seccomp-installer"):
        with open(os.path.join(out, "kubernetes", f"{name}.yaml")) as f:
            docs[name] = list(yaml.safe_load_all(f))
    return proc, docs


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    top = tmp_path_factory.mktemp("k8s")
    shop = write_app(top / "shop", SHOP)
    out = {}
    for name, app in (("zoobank", ZOOBANK), ("shop", shop)):
        proc, docs = export(app, top / f"{name}-out")
        plan = plan_for_export(app, say=lambda _: None)
        out[name] = {"app": app, "out": str(top / f"{name}-out"), "docs": docs, "plan": plan, "stdout": proc.stdout}
    return out


def containers(deployment):
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def mounts(container):
    return {m["mountPath"]: (m["name"], bool(m.get("readOnly"))) for m in container["volumeMounts"]}


@pytest.mark.parametrize("name", ["zoobank", "shop"])
def test_every_manifest_validates_against_the_kubernetes_schemas_in_strict_mode(apps, name):
    docs = [doc for found in apps[name]["docs"].values() for doc in found]
    assert [d["kind"] for d in docs] == ["Deployment", "NetworkPolicy", "ConfigMap", "DaemonSet"]
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_a_field_kubernetes_does_not_know(apps):
    deployment = json.loads(json.dumps(apps["zoobank"]["docs"]["deployment"][0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", ["zoobank", "shop"])
def test_each_principal_is_a_locked_down_container_with_the_plans_ids_and_profile(apps, name):
    plan, out = apps[name]["plan"], apps[name]["out"]
    deployment = apps[name]["docs"]["deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    by_name = containers(deployment)
    app = kubernetes.k8s_name(plan.app_name, "app")
    assert pod["automountServiceAccountToken"] is False and pod["shareProcessNamespace"] is False
    fs_group = pod["securityContext"]["fsGroup"]
    assert fs_group not in {p.gid for p in plan.principals} | set(plan.groups.values())
    for p in plan.principals:
        c = by_name[kubernetes.k8s_name(p.name, "principal")]
        assert c in (pod["containers"] if p.kind == "front_end" else pod["initContainers"])
        sec = c["securityContext"]
        assert (sec["runAsUser"], sec["runAsGroup"]) == (p.uid, p.gid)
        assert sec["runAsNonRoot"] and not sec["privileged"]
        assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"] == {"drop": ["ALL"]}
        profile = sec["seccompProfile"]
        assert profile["type"] == "Localhost"
        file_name = f"{app}-{kubernetes.k8s_name(p.name, 'principal')}.json"
        assert profile["localhostProfile"] == f"pspy/{file_name}"
        with open(os.path.join(out, "seccomp", file_name)) as f:
            assert json.load(f) == p.seccomp["profile"]
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        env = {e["name"]: e for e in c["env"]}
        assert env["PSPY_PRINCIPAL"]["value"] == p.name
        assert {n for n, e in env.items() if "valueFrom" in e} == set(p.env)   # only its own variables
        if p.kind == "provider":
            assert c["restartPolicy"] == "Always"   # a native sidecar: up before the front end starts
            assert c["startupProbe"]["exec"]["command"][-1] == p.socket
            assert c["command"][-3:] == ["-s", "-m", "pspy.provider"]
        else:
            assert c["command"][-len(p.argv):] == p.argv


def test_memory_and_cpus_become_resource_limits_and_the_rest_stays_an_rlimit(apps):
    by_name = containers(apps["shop"]["docs"]["deployment"][0])
    assert by_name["store"]["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                             "limits": {"memory": str(256 << 20), "cpu": "500m"}}
    assert "limits" not in by_name["reports"]["resources"]
    assert kubernetes.resources({"memory": 32 << 20, "cpus": 0.01}) == {
        "requests": {"cpu": "10m", "memory": str(32 << 20)}, "limits": {"memory": str(32 << 20), "cpu": "10m"}}


def test_sockets_and_data_are_mounted_only_into_the_containers_the_plan_lets_reach_them(apps):
    zoobank = containers(apps["zoobank"]["docs"]["deployment"][0])
    web, auth, bank = mounts(zoobank["web"]), mounts(zoobank["auth"]), mounts(zoobank["bank"])
    assert bank["/.pspy/sock/Bank"] == ("sock-bank", False) and web["/.pspy/sock/Bank"] == ("sock-bank", True)
    assert "/.pspy/sock/Bank" not in auth                  # Bank's callers: web alone
    assert auth["/.pspy/sock/Auth"][1] is False and web["/.pspy/sock/Auth"][1] and bank["/.pspy/sock/Auth"][1]
    assert bank["/app/db/bank"][1] is False and auth["/app/db/cred"][1] is False
    assert "/app/db/bank" not in web and "/app/db/bank" not in auth
    assert "/app/db/cred" not in web and "/app/db/cred" not in bank
    volumes = {v["name"]: v for v in apps["zoobank"]["docs"]["deployment"][0]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["sock-bank"]["emptyDir"]["medium"] == "Memory"
    shop = containers(apps["shop"]["docs"]["deployment"][0])
    assert mounts(shop["store"])["/app/data/store"][1] is False
    assert mounts(shop["reports"])["/app/data/store"][1] is True    # StoreGroup's r-x: read-only
    assert "/app/data/store" not in mounts(shop["web"]) and "/app/data/store" not in mounts(shop["fetcher"])


def test_egress_is_denied_unless_a_provider_or_the_user_asks_for_it(apps, tmp_path):
    deployment = apps["zoobank"]["docs"]["deployment"][0]
    policy = apps["zoobank"]["docs"]["networkpolicy"][0]
    assert policy["spec"]["policyTypes"] == ["Egress"] and policy["spec"]["egress"] == []
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    shop_policy = apps["shop"]["docs"]["networkpolicy"][0]
    assert shop_policy["spec"]["egress"] == [{}]
    assert "Fetcher needs the network" in apps["shop"]["stdout"] and "seccomp profiles alone" in apps["shop"]["stdout"]
    _, docs = export(ZOOBANK, tmp_path / "out", "--allow-egress")
    assert docs["networkpolicy"][0]["spec"]["egress"] == [{}]


def test_a_provider_without_network_gets_a_profile_that_refuses_inet_sockets(apps):
    with open(os.path.join(apps["zoobank"]["out"], "seccomp", "zoobank-bank.json")) as f:
        bank = json.load(f)
    with open(os.path.join(apps["zoobank"]["out"], "seccomp", "zoobank-web.json")) as f:
        web = json.load(f)
    assert _socket_errno_under(bank, 2) == errno.EPERM    # AF_INET
    assert _socket_errno_under(bank, 1) == 0              # AF_UNIX: RPC still works
    assert _socket_errno_under(web, 2) == 0


def _socket_errno_under(profile, family):
    """Load ``profile`` as a runtime would (no trap) in a child, try socket(family)."""
    from pspy._native import lib
    from pspy.seccomp.compile import _build
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)   # PR_SET_NO_NEW_PRIVS, as allowPrivilegeEscalation: false sets it
            ctx = _build(profile, trapping=False)
            if lib.seccomp_load(ctx) != 0:
                os._exit(98)
            fd = libc.socket(family, 1, 0)
            code = 0 if fd >= 0 else ctypes.get_errno()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("name", ["zoobank", "shop"])
def test_seccomp_profiles_are_oci_profiles_for_this_machine_and_the_installer_carries_them(apps, name):
    folder = os.path.join(apps[name]["out"], "seccomp")
    config_map, daemon_set = apps[name]["docs"]["seccomp-installer"]
    assert sorted(config_map["data"]) == sorted(os.listdir(folder))
    assert len(os.listdir(folder)) == len(apps[name]["plan"].principals)
    for file_name in os.listdir(folder):
        path = os.path.join(folder, file_name)
        profile = seccomp.read_profile(path)            # pspy's own OCI reader: fields, actions, args
        assert seccomp.rules(profile, path)              # every name a syscall of this machine
        assert seccomp.compile_bpf(profile)              # and libseccomp builds it
        with open(path) as f:
            assert config_map["data"][file_name] == f.read()
    host = daemon_set["spec"]["template"]["spec"]["volumes"][1]["hostPath"]["path"]
    assert host == "/var/lib/kubelet/seccomp/pspy"   # pspy's folder alone: other workloads' profiles are out of reach


def test_the_export_writes_an_image_recipe_with_the_app_and_the_plan(apps):
    out, plan = apps["zoobank"]["out"], apps["zoobank"]["plan"]
    with open(os.path.join(out, "Dockerfile")) as f:
        dockerfile = f.read()
    assert "pspy-privsep==" in dockerfile and "COPY app/ /app/" in dockerfile
    assert "RUN python -s setup_db.py" in dockerfile and "pspy.export.image" in dockerfile
    assert sorted(os.listdir(os.path.join(out, "app"))) == sorted(
        n for n in os.listdir(ZOOBANK) if n != "__pycache__")
    with open(os.path.join(out, "plan.json")) as f:
        in_image = json.load(f)
    assert [p["uid"] for p in in_image["principals"]] == [p.uid for p in plan.principals]
    assert in_image["jail"] == "/" and in_image["app_dir"] == "/app"


def test_mistakes_are_clear_errors_without_a_traceback(tmp_path):
    proc = pspy("export", "kubernetes", str(tmp_path / "nope"))
    assert proc.returncode == 1 and f"{tmp_path / 'nope'}: app folder not found" in proc.stderr
    empty = write_app(tmp_path / "empty", {"app.py": "print('hi')\n"})
    proc = pspy("export", "kubernetes", empty, "--out", str(tmp_path / "o1"))
    assert proc.returncode == 1 and "no @pspy.service found" in proc.stderr
    filed = write_app(tmp_path / "filed", {
        "pspy.toml": 'front_end = ["python", "app.py"]\n',
        "svc.py": """
            import pspy

            @pspy.service(service_provider="Keys", perms={"secret.key": 0o600})
            def sign(data):
                return data
            """,
        "secret.key": "k\n"})
    proc = pspy("export", "kubernetes", filed, "--out", str(tmp_path / "o2"))
    assert proc.returncode == 1 and "secret.key is a file" in proc.stderr and "svc.py:4" in proc.stderr
    proc = pspy("export", "kubernetes", ZOOBANK, "--out", str(tmp_path / "o3"))
    assert proc.returncode == 0
    proc = pspy("export", "kubernetes", ZOOBANK, "--out", str(tmp_path / "filed"))
    assert proc.returncode == 1 and "did not write" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o2")


def _image(app_out, top):
    """The image the Dockerfile builds, as far as its pspy step goes: the app,
    the plan, and pspy.export.image run on them (as root, as in the build)."""
    from pspy.export.image import prepare
    from pspy.plan import Plan
    image = os.path.join(top, "image")
    shutil.copytree(os.path.join(app_out, "app"), os.path.join(image, "app"), symlinks=True)
    os.makedirs(os.path.join(image, ".pspy"))
    os.makedirs(os.path.join(image, "etc"))
    shutil.copy(os.path.join(app_out, "plan.json"), os.path.join(image, ".pspy", "plan.json"))
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", os.path.join(image, "etc", name))
    with open(os.path.join(image, ".pspy", "plan.json")) as f:
        plan = Plan.from_dict(json.load(f))
    if plan.script:   # RUN python -s SCRIPT, in /app, as root
        subprocess.run([sys.executable, "-s", plan.script], cwd=os.path.join(image, "app"), check=True)
    prepare(plan, os.path.join(image, "app"), os.path.join(image, ".pspy", "seed"), os.path.join(image, "etc"),
            say=lambda _: None)
    return image, plan


@pytest.mark.root
def test_the_image_keeps_each_principals_data_for_it_alone(apps, tmp_path):
    image, plan = _image(apps["shop"]["out"], tmp_path)
    store = plan.principal("Store")
    seed = os.path.join(image, ".pspy", "seed", "Store")
    st = os.stat(seed)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (store.uid, store.gid, 0o700)
    greeting = os.stat(os.path.join(seed, "data", "store", "greeting"))
    assert (greeting.st_uid, greeting.st_mode & 0o777) == (store.uid, 0o640)
    mount_point = os.path.join(image, "app", "data", "store")
    assert os.listdir(mount_point) == [] and os.stat(mount_point).st_uid == 0
    code = os.stat(os.path.join(image, "app", "store.py"))
    assert code.st_uid == 0 and not code.st_mode & 0o022
    with open(os.path.join(image, "etc", "group")) as f:
        assert f"StoreGroup:x:{plan.groups['StoreGroup']}:shop-reports\n" in f.read()


PEER = """
import json, os, socket, struct, sys
import pspy
out = {}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except Exception as e:
        out[key] = [type(e).__name__, getattr(e, "errno", None) or str(e)]
"""

WEB_PROBE = PEER + """
import fetcher, reports, store
attempt("get", lambda: store.get("greeting"))
attempt("put", lambda: store.put("note", "from web"))
attempt("get_note", lambda: store.get("note"))
attempt("count", lambda: reports.count())
attempt("via_reports", lambda: reports.greeting())
attempt("ping", lambda: fetcher.ping())
attempt("squat", lambda: open("/.pspy/sock/Store/rpc.sock.new", "w").close())
attempt("store_data", lambda: os.listdir("/app/data/store"))
def peer():
    s = socket.socket(socket.AF_UNIX)
    s.connect("/.pspy/sock/Store/rpc.sock")
    return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
attempt("peer", peer)
attempt("inet", lambda: socket.socket(socket.AF_INET).close())
print(json.dumps(out))
"""

INTRUDER_PROBE = PEER + """
import store
attempt("get", lambda: store.get("greeting"))
print(json.dumps(out))
"""

REPORTS_PROBE = PEER + """
attempt("read", lambda: open("/app/data/store/greeting").read())
attempt("write", lambda: open("/app/data/store/greeting", "a").close())
print(json.dumps(out))
"""

STORE_PROBE = PEER + """
attempt("inet", lambda: socket.socket(socket.AF_INET).close())
attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
print(json.dumps(out))
"""


@pytest.mark.root
def test_in_a_pod_callers_are_known_by_uid_across_containers(apps, tmp_path):
    """The pod: one network namespace, a mount and PID namespace per
    container, each provider's socket on a volume shared with its callers
    (read-only for them). The provider learns the caller from SO_PEERCRED:
    its uid, mapped through the plan; a process that claims to be web but
    runs under another uid is refused."""
    image, plan = _image(apps["shop"]["out"], tmp_path)
    deployment = apps["shop"]["docs"]["deployment"][0]
    python = ["python", "-s", "-c"]
    fetcher_uid = plan.principal("Fetcher").uid
    result = run_pod(deployment, image, os.path.join(apps["shop"]["out"], "seccomp"), str(tmp_path), [
        {"container": "web", "command": python + [WEB_PROBE]},
        {"container": "web", "command": python + [INTRUDER_PROBE], "user": fetcher_uid},
        {"container": "reports", "command": python + [REPORTS_PROBE]},
        {"container": "store", "command": python + [STORE_PROBE]},
    ])
    probes = []
    for probe in result["probes"]:
        assert probe["rc"] == 0, probe["stderr"]
        probes.append(json.loads(probe["stdout"].strip().splitlines()[-1]))
    web, intruder, reports, store = probes
    assert web["get"] == ["ok", "hello\n"]                       # seeded from the image by seed-store
    assert web["put"][0] == "ok" and web["get_note"] == ["ok", "from web"]
    assert web["count"] == ["ok", 2] and web["via_reports"] == ["ok", "hello\n"]   # Reports -> Store
    assert web["ping"] == ["ok", "pong"]
    assert web["squat"] == ["OSError", errno.EROFS]            # no socket of its own in Store's folder
    assert web["store_data"] == ["ok", []]                      # Store's volume is not in web's view
    # The kernel's word across containers: Store's uid, and pid 0 (a sibling PID namespace).
    assert web["peer"] == ["ok", [0, plan.principal("Store").uid, plan.principal("Store").gid]]
    assert web["inet"][0] == "ok"
    # Fetcher may call nothing of Store's: refused at accept, by its uid (pspy/rpc/server.py)
    assert intruder["get"][0] == "PermissionDenied" and "Fetcher may call no service of Store" in intruder["get"][1]
    assert "refused a connection from Fetcher (uid %d, pid 0)" % fetcher_uid in result["logs"]["store"]
    # Store's data through StoreGroup: readable; not writable (its bits, and a read-only mount under them).
    assert reports["read"] == ["ok", "hello\n"] and reports["write"][1] in (errno.EACCES, errno.EROFS)
    assert store["inet"] == ["PermissionError", errno.EPERM] and store["unix"][0] == "ok"
    assert "Max open files            64" in result["limits"]["store"]   # pspy.export.container's rlimit


ZOOBANK_PROBE = PEER + """
import auth, bank
a = auth.Auth()
alice = a.register("alice", "pw")
bank.new_account("alice")
a.register("bob", "pw")
bank.new_account("bob")
attempt("transfer", lambda: bank.transfer("alice", "bob", 3, alice))     # Bank asks Auth: container to container
attempt("forged", lambda: bank.transfer("alice", "bob", 1, "not-a-token"))
attempt("balances", lambda: [bank.balance("alice"), bank.balance("bob")])
attempt("bank_db", lambda: open("/app/db/bank/bank.db", "rb").close())
print(json.dumps(out))
"""


@pytest.mark.root
def test_zoobank_runs_in_its_pod_with_its_set_up_scripts_databases(apps, tmp_path):
    image, plan = _image(apps["zoobank"]["out"], tmp_path)
    result = run_pod(apps["zoobank"]["docs"]["deployment"][0], image,
                     os.path.join(apps["zoobank"]["out"], "seccomp"), str(tmp_path),
                     [{"container": "web", "command": ["python", "-s", "-c", ZOOBANK_PROBE]}])
    (probe,) = result["probes"]
    assert probe["rc"] == 0, probe["stderr"]
    web = json.loads(probe["stdout"].strip().splitlines()[-1])
    assert web["transfer"] == ["ok", 7] and web["balances"] == ["ok", [7, 13]]
    assert web["forged"][0] == "PermissionError"
    assert web["bank_db"][0] == "FileNotFoundError"     # Bank's volume is not in web's view
