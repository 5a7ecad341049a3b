"""pspy analyze: the report agrees with what each principal can do from inside
its sandbox, every finding type comes from an app that has the weakness
(and none from zoobank's clean configuration), --expect asserts, --live
tries every claim, the JSON follows its schema, the graph renders."""

import json
import os
import subprocess

import pytest

from conftest import REPO, ZOOBANK, access_of, free_port, pspy, write_app

pytestmark = pytest.mark.root

MICROBLOG = os.path.join(REPO, "examples", "microblog")
SCHEMA = json.load(open(os.path.join(REPO, "docs", "analyze.schema.json")))

APPS = {
    "zoobank": (ZOOBANK, {"ZOOBANK_PORT": None, "ZOOBANK_SECRET_KEY": "front-end-only-secret"}),
    "microblog": (MICROBLOG, {"MICROBLOG_PORT": None, "MICROBLOG_SECRET_KEY": "front-end-only-secret"}),
}


def report_of(jail, *extra):
    return json.loads(pspy("analyze", "--jail", jail, "--format", "json", *extra, check=True).stdout)


def validate(data):
    import jsonschema
    jsonschema.validate(data, SCHEMA)


@pytest.fixture(scope="module", params=[(app, mode) for app in APPS for mode in ("chroot", "namespaces")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def running(request, tmp_path_factory):
    name, mode = request.param
    source, env = APPS[name]
    env = {k: (str(free_port()) if v is None else v) for k, v in env.items()}
    jail = str(tmp_path_factory.mktemp(f"analyze-{name}-{mode}") / "jail")
    flags = ["--namespaces"] if mode == "namespaces" else []
    pspy("bootstrap", source, "--jail", jail, "--detach", *flags, env=env, check=True)
    try:
        yield {"jail": jail, "app": name, "mode": mode}
    finally:
        pspy("stop", "--jail", jail)


def test_every_principal_opening_every_app_file_agrees_with_the_report(running):
    report = report_of(running["jail"])
    validate(report)
    for p in report["principals"]:
        files = [f for f in p["files"] if not f.endswith("/")]
        assert len(files) >= 8, files
        seen = access_of(running["jail"], p["name"], files)
        wrong = [(f, p["files"][f], seen[f]) for f in files
                 if (seen[f]["read"] == "ok") != ("r" in p["files"][f])
                 or (seen[f]["write"] == "ok") != ("w" in p["files"][f])]
        assert wrong == [], (p["name"], wrong)
        # The controls: something is readable, and a provider writes its own data.
        assert any("r" in p["files"][f] for f in files)
        if p["kind"] == "provider":
            assert any("w" in p["files"][f] for f in files), p["name"]


def test_live_tries_every_claim_from_inside_the_running_principals_and_finds_no_disagreement(running):
    proc = pspy("analyze", "--jail", running["jail"], "--live", "--format", "json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["disagreements"] == 0, proc.stdout
    report = report_of(running["jail"])
    for p in report["principals"]:
        r = result["principals"][p["name"]]
        # Each file twice (read, write), each service of every other provider once, the network once.
        services = sum(len(s["methods"]) if s["kind"] == "class" else 1
                       for q in report["principals"] if q["name"] != p["name"] for s in q["services"])
        assert r["checks"] == 2 * len(p["files"]) + services + 1, (p["name"], r["checks"])
        if running["mode"] == "namespaces":
            assert r["how"].startswith("probe joined the namespaces of its running process"), r["how"]


def test_zoobanks_clean_configuration_has_no_finding_and_ids_that_read_well(running):
    report = report_of(running["jail"])
    if running["app"] == "zoobank":
        assert report["findings"] == []
    for p in report["principals"]:
        assert p["gid"] == p["uid"], p   # its own group has its uid's number


# --- findings, each from an app that has the weakness ------------------------------

STORE = """
import pspy

@pspy.service(service_provider="Store", perms={PERMS}{EXTRA})
def put(key, value):
    return None
"""


def store_app(tmp_path, perms, extra="", files=None, toml=None):
    sources = {"store.py": STORE.replace("{PERMS}", repr(perms)).replace("{EXTRA}", extra), **(files or {})}
    if toml:
        sources["pspy.toml"] = toml
    return write_app(tmp_path / "app", sources)


def findings_of(tmp_path, app, *flags):
    jail = str(tmp_path / "jail")
    built = pspy("bootstrap", app, "--jail", jail, "--no-run", *flags, check=True)
    report = report_of(jail)
    validate(report)
    return report, built, jail


@pytest.mark.parametrize("flags", [[], ["--namespaces"]], ids=["chroot", "namespaces"])
def test_another_principals_data_written_and_read_and_a_path_the_front_end_shares(tmp_path, flags):
    app = store_app(tmp_path, {"data/shared/": 0o770, "data/public/": 0o750}, ", group='Share'", files={
        "data/shared/notes.txt": "", "data/public/readme.txt": "",
        "reader.py": "import pspy\n@pspy.service(service_provider='Reader', extra_groups=['Share'])\n"
                     "def get(): pass\n"},
        toml='extra_groups = { web = ["Share"] }\n')
    report, built, jail = findings_of(tmp_path, app, *flags)
    got = {(f["id"], f["principal"], f["path"]) for f in report["findings"]}
    assert ("data-written-by-another", "Reader", "data/shared/") in got
    assert ("data-written-by-another", "web", "data/shared/") in got
    assert ("data-read-by-another", "Reader", "data/public/") in got
    assert ("shared-write", "Store", "data/shared/") in got
    assert "serious finding" in built.stdout   # bootstrap points at them
    severity = {f["id"]: f["severity"] for f in report["findings"]}
    assert severity["data-written-by-another"] == "high" and severity["data-read-by-another"] == "medium"
    # What the findings say is what Reader can do, from inside.
    seen = access_of(jail, "Reader", ["data/shared/notes.txt", "data/public/readme.txt"])
    assert seen["data/shared/notes.txt"] == {"read": "ok", "write": "ok"}
    assert seen["data/public/readme.txt"]["read"] == "ok" and seen["data/public/readme.txt"]["write"] != "ok"


def test_a_world_writable_data_folder_is_a_finding(tmp_path):
    report, _, _ = findings_of(tmp_path, store_app(tmp_path, {"data/drop/": 0o777}))
    assert [(f["id"], f["path"], f["severity"]) for f in report["findings"] if f["id"] == "world-writable"] == [
        ("world-writable", "data/drop/", "high")]


def test_a_service_no_principal_may_call_is_a_finding(tmp_path):
    app = write_app(tmp_path / "app", {"store.py": """
        import pspy

        @pspy.service(service_provider="Store", callers=[])
        def orphan():
            return None

        @pspy.service(service_provider="Store")
        def used():
            return None
        """})
    report, _, _ = findings_of(tmp_path, app)
    assert [(f["id"], f["principal"]) for f in report["findings"]] == [("uncallable-service", "Store")]
    assert "Store.orphan" in report["findings"][0]["reason"] and "store.py:" in report["findings"][0]["reason"]


def test_a_service_every_principal_may_call_though_pspy_learn_saw_one_is_a_finding(tmp_path):
    # calls.json as pspy learn writes it (tests/test_seccomp.py runs learn
    # for real and checks the file): only web was seen calling Store.put.
    record = {"comment": "calls pspy learn saw", "calls": {"Store.put": ["web"], "Reader.get": ["web", "Store"]}}
    app = store_app(tmp_path, {"data/": 0o700}, files={
        "reader.py": "import pspy\n@pspy.service(service_provider='Reader')\ndef get(): pass\n",
        "seccomp/calls.json": json.dumps(record)})
    report, _, _ = findings_of(tmp_path, app)
    assert [(f["id"], f["principal"]) for f in report["findings"]] == [("callers-wider-than-used", "Store")]
    assert "callers=['web'] at store.py:" in report["findings"][0]["reason"]
    # Control: with no record of calls there is nothing to compare with.
    os.unlink(os.path.join(app, "seccomp", "calls.json"))
    report, _, _ = findings_of(tmp_path, app)
    assert report["findings"] == []


def test_seccomp_none_and_a_profile_allowing_a_dangerous_syscall_are_findings(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write", "exit_group", "ptrace"], "action": "SCMP_ACT_ALLOW"}]}
    app = write_app(tmp_path / "app", {
        "store.py": "import pspy\n@pspy.service(service_provider='Store', seccomp='profiles/store.json')\n"
                    "def put(): pass\n",
        "open.py": "import pspy\n@pspy.service(service_provider='Open', seccomp='none')\ndef get(): pass\n",
        "profiles/store.json": json.dumps(profile)})
    report, _, _ = findings_of(tmp_path, app)
    got = {(f["id"], f["principal"]) for f in report["findings"]}
    assert got == {("dangerous-syscall", "Store"), ("no-seccomp", "Open")}, report["findings"]
    assert "ptrace" in next(f["reason"] for f in report["findings"] if f["id"] == "dangerous-syscall")
    exposure = {p["name"]: p["exposure"] for p in report["principals"]}
    assert exposure["Open"]["score"] > exposure["web"]["score"]
    assert "no seccomp filter" in exposure["Open"]["top"]


def test_a_policy_much_wider_than_the_learned_profile_is_a_finding(tmp_path):
    learned = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write", "exit_group", "openat", "close", "futex", "mmap", "brk"],
         "action": "SCMP_ACT_ALLOW"}]}
    app = store_app(tmp_path, {"data/": 0o700}, files={"seccomp/Store.json": json.dumps(learned)})
    report, _, _ = findings_of(tmp_path, app)
    assert [(f["id"], f["principal"]) for f in report["findings"]] == [("wider-than-learned", "Store")]
    store = next(p for p in report["principals"] if p["name"] == "Store")
    assert store["seccomp"]["learned"]["allows"] == 8 and len(store["seccomp"]["learned"]["extra"]) > 100
    # Control: run under the learned profile, the finding is gone.
    with open(os.path.join(app, "pspy.toml"), "w") as f:
        f.write('seccomp = { Store = "seccomp/Store.json" }\n')
    report, _, _ = findings_of(tmp_path, app)
    assert report["findings"] == []


def test_uid_0_is_a_critical_finding_in_the_papers_form(tmp_path):
    _, _, jail = findings_of(tmp_path, store_app(tmp_path, {"data/": 0o700}))
    as_root = json.loads(pspy("analyze", "--jail", jail, "--uid", "0", "--gid", "0", "--format", "json",
                              check=True).stdout)
    validate(as_root)
    assert [(f["id"], f["severity"]) for f in as_root["findings"]] == [("uid-0", "critical")]
    assert "data/" in as_root["principals"][0]["writable"]
    nobody = json.loads(pspy("analyze", "--jail", jail, "--uid", "65534", "--gid", "65534", "--format", "json",
                             check=True).stdout)
    assert nobody["findings"] == [] and "data/" not in nobody["principals"][0]["readable"]


# --- output forms ---------------------------------------------------------------------

def test_text_leads_with_findings_collapses_folders_and_colours_only_when_asked(tmp_path):
    files = {f"static/img{i}.png": "" for i in range(20)}
    app = store_app(tmp_path, {"data/": 0o700, "data/drop/": 0o777}, files=files)
    _, _, jail = findings_of(tmp_path, app)
    text = pspy("analyze", "--jail", jail, check=True).stdout
    assert text.index("Findings: 1") < text.index("Exposure") < text.index("\nweb:")
    assert "HIGH [Store]: data/drop/ is a world-writable folder" in text
    assert "static/ (20 entries)" in text and "img7.png" not in text
    assert "\033[" not in text   # piped: plain
    coloured = pspy("analyze", "--jail", jail, "--color", "always", check=True).stdout
    assert "\033[31mHIGH\033[0m" in coloured
    full = report_of(jail)
    assert "static/img7.png" in full["principals"][0]["files"]   # JSON is complete


def test_a_file_name_chosen_in_the_jail_cannot_drive_the_terminal_or_forge_a_line(tmp_path):
    _, _, jail = findings_of(tmp_path, store_app(tmp_path, {"data/": 0o700}))
    data = os.path.join(jail, "app", "data")
    evil = "evil\x1b[2J\x1b[32mFindings: none\x1b[0m"
    for name in (evil, "line\nFindings: none", "rtl\u202egnp.exe"):
        open(os.path.join(data, name), "w").close()
        os.chown(os.path.join(data, name), os.stat(data).st_uid, os.stat(data).st_gid)
        os.chmod(os.path.join(data, name), 0o400)   # read-only in a read-write folder: listed one by one
    for args in ([], ["--color", "always"], ["--format", "dot"]):
        out = pspy("analyze", "--jail", jail, *args, check=True).stdout
        assert "\x1b[2J" not in out and "\u202e" not in out, args
        assert len([line for line in out.splitlines() if line.startswith("Findings")]) == (0 if "dot" in args else 1)
        if not args:
            assert "evil\\x1b[2J" in out and "line\\x0aFindings: none" in out and "rtl\\u202egnp.exe" in out
    # JSON keeps the names as they are (JSON escapes them itself).
    assert "data/" + evil in report_of(jail)["principals"][1]["files"]


def test_dot_output_draws_principals_data_and_calls_and_graphviz_renders_it(tmp_path):
    _, _, jail = findings_of(tmp_path, store_app(tmp_path, {"data/": 0o700}))
    dot = pspy("analyze", "--jail", jail, "--format", "dot", check=True).stdout
    assert '"principal:web" -> "principal:Store"' in dot and '"principal:Store" -> "data:data/"' in dot
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True)
    assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr


# --- expectations ---------------------------------------------------------------------

ZOOBANK_EXPECT = """
[[files]]
under = "db/bank/"
readable_only_by = ["Bank"]
writable_only_by = ["Bank"]

[[files]]
under = "db/cred/"
readable_only_by = ["Auth"]

[principals.web]
may_call = ["Auth", "Bank"]

[principals.Auth]
may_call = []

[all]
denies_syscalls = ["ptrace", "mount", "bpf"]
no_findings = true
"""


@pytest.fixture(scope="module")
def zoobank_jail(tmp_path_factory):
    jail = str(tmp_path_factory.mktemp("analyze-expect") / "jail")
    pspy("bootstrap", ZOOBANK, "--jail", jail, "--no-run", check=True)
    return jail


def test_expect_passes_on_a_true_file(zoobank_jail, tmp_path):
    rules = tmp_path / "expect.toml"
    rules.write_text(ZOOBANK_EXPECT)
    proc = pspy("analyze", "--jail", zoobank_jail, "--expect", str(rules))
    assert proc.returncode == 0 and "every expectation" in proc.stdout, proc.stdout + proc.stderr


def test_expect_fails_on_a_false_file_naming_rule_principal_and_path(zoobank_jail, tmp_path):
    rules = tmp_path / "expect.toml"
    rules.write_text("""
[[files]]
under = "db/bank/"
readable_only_by = ["Auth"]

[principals.web]
may_call = ["Bank"]

[principals.Bank]
network = true
memory_at_most = "256M"
""")
    proc = pspy("analyze", "--jail", zoobank_jail, "--expect", str(rules))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "expectation not met" in line]
    assert any("files[0]" in line and "Bank can read db/bank/" in line for line in lines), lines
    assert any("principals.web.may_call" in line and "web" in line and "may also call Auth" in line
               for line in lines), lines
    assert any("principals.Bank.network" in line for line in lines), lines
    assert any("principals.Bank.memory_at_most" in line and "none" in line for line in lines), lines
    assert len(lines) == 4, lines


@pytest.mark.parametrize("text,said", [
    ("", "no expectations in it"),
    ("[all]\ndenies_syscalls = ['ptrce']\n", "'ptrce' is not a syscall"),
    ("[all]\ndenies_syscalls = ['PTRACE']\n", "'PTRACE' is not a syscall"),
    ("[principals.web]\nmax_exposure = 11\n", "from 0 to 10, got 11"),
    ("[principals.web]\nmax_exposure = nan\n", "from 0 to 10, got nan"),
    ("[[files]]\nunder = 'db/bank/'\n", "'under' alone expects nothing"),
    ("[principals.Nobody]\nnetwork = false\n", "'Nobody' is not a principal"),
    ("[principals.web]\nnetwork = 1\n", "principals.web.network must be true or false"),
    ("[principals.web]\nfly = true\n", "unknown key(s) fly"),
    ("[[files]]\nreadable_only_by = ['Bank']\n", "'under' required"),
    ("[weird]\n", "unknown table(s) weird"),
    ("[all]\nno_findings = ['nope']\n", "unknown finding 'nope'"),
    ("not toml [", "not valid TOML"),
])
def test_a_bad_expectations_file_is_an_error_naming_file_and_key(zoobank_jail, tmp_path, text, said):
    rules = tmp_path / "expect.toml"
    rules.write_text(text)
    proc = pspy("analyze", "--jail", zoobank_jail, "--expect", str(rules))
    assert proc.returncode == 1 and said in proc.stderr and str(rules) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_expectations_file_that_is_not_text_or_goes_with_other_forms_is_an_error(zoobank_jail, tmp_path):
    rules = tmp_path / "expect.toml"
    rules.write_bytes(b"\xff\xfe")
    proc = pspy("analyze", "--jail", zoobank_jail, "--expect", str(rules))
    assert proc.returncode == 1 and "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr
    rules.write_text(ZOOBANK_EXPECT)
    for extra, said in ((["--live"], "--live and --expect"), (["--format", "json"], "--expect prints")):
        proc = pspy("analyze", "--jail", zoobank_jail, "--expect", str(rules), *extra)
        assert proc.returncode == 1 and said in proc.stderr, proc.stderr
    proc = pspy("analyze", "--jail", zoobank_jail, "--live", "--format", "dot")
    assert proc.returncode == 1 and "not dot" in proc.stderr


# --- live, where the report and the sandbox disagree ---------------------------------------

def test_live_catches_a_jail_changed_after_the_start_of_the_app(tmp_path):
    # Reader is in Store's group but Store's data is 0700, so it is not in
    # Reader's view. Opened to the group after the start, the report (read
    # from the jail) says Reader can read it; the running Reader cannot: its
    # mounts were made at its start. --live says so; a restart agrees again.
    app = store_app(tmp_path, {"data/": 0o700}, ", group='Share'", files={
        "data/x.txt": "",
        "reader.py": "import pspy\n@pspy.service(service_provider='Reader', extra_groups=['Share'])\n"
                     "def get(): pass\n"})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--detach", check=True)
    try:
        assert pspy("analyze", "--jail", jail, "--live").returncode == 0   # control
        os.chmod(os.path.join(jail, "app", "data"), 0o750)
        os.chmod(os.path.join(jail, "app", "data", "x.txt"), 0o640)
        proc = pspy("analyze", "--jail", jail, "--live")
        assert proc.returncode == 1, proc.stdout
        assert "DISAGREES: file data/x.txt: the report says Reader can read, the probe cannot (ENOENT)" in \
            proc.stdout, proc.stdout
    finally:
        pspy("stop", "--jail", jail)


LEAVER = """
import ctypes, os
import pspy

# Compromised at start: a user and mount namespace of its own, where it
# could mount what it likes over what a probe joining it would run.
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:   # CLONE_NEWUSER | CLONE_NEWNS
    raise OSError(ctypes.get_errno(), "unshare")

@pspy.service(service_provider="Leaver", seccomp="none")
def hello():
    return "hi"
"""


def test_live_joins_what_pspy_built_and_names_a_principal_that_left_it(tmp_path):
    app = store_app(tmp_path, {"data/": 0o700}, files={"leaver.py": LEAVER, "data/pipe-here": ""})
    jail = str(tmp_path / "jail")
    pspy("bootstrap", app, "--jail", jail, "--namespaces", "--detach", check=True)
    try:
        os.unlink(os.path.join(jail, "app", "data", "pipe-here"))
        os.mkfifo(os.path.join(jail, "app", "data", "pipe-here"), 0o600)   # a FIFO is not opened
        proc = pspy("analyze", "--jail", jail, "--live")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        said = proc.stdout
        assert "DISAGREES: namespace user: the report says Leaver is in pspy's" in said, said
        assert "DISAGREES: namespace mnt" in said
        assert "CAVEAT: its policy allows every syscall" in said
        # Control: Store stayed where pspy put it, and every file its probe
        # tried agrees with the report, FIFO and all. What it cannot do is
        # call Leaver: in a user namespace of its own, Leaver no longer
        # knows its callers' uids.
        assert "DISAGREES: file" not in said and "DISAGREES: namespace" not in said.split("  Store:")[1], said
        assert [line.strip() for line in said.split("  Store:")[1].splitlines() if "DISAGREES" in line] == [
            "DISAGREES: call Leaver.hello: the report says Store can call, the probe cannot (False)"], said
    finally:
        pspy("stop", "--jail", jail)


def test_live_refuses_an_app_that_is_not_running(zoobank_jail):
    proc = pspy("analyze", "--jail", zoobank_jail, "--live")
    assert proc.returncode == 1 and "is not running" in proc.stderr and "Traceback" not in proc.stderr
