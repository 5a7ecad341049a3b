"""The CLI answers user mistakes with one clear line, never a traceback."""

import os
import subprocess
import sys

import pytest

from conftest import pspy, write_app


def test_decorator_mistakes_are_reported_with_file_and_line(tmp_path):
    app = write_app(tmp_path / "app", {"svc.py": """
        import pspy
        PERMS = {"db": 0o700}

        @pspy.service(service_provider="Store", perms=PERMS)
        def put(k, v):
            pass

        @pspy.service(service_provider="Store", colour="blue")
        def get(k):
            pass
        """})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
    assert proc.returncode == 1
    assert "svc.py:5" in proc.stderr and "literal" in proc.stderr and "PERMS" in proc.stderr
    assert "svc.py:9" in proc.stderr and "colour" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "jail")


def test_commands_on_a_folder_that_is_not_a_jail_say_so(tmp_path):
    for args in (["status"], ["stop"], ["analyze"], ["exec", "web", "--", "true"]):
        if args[0] == "exec":
            proc = pspy("exec", "--jail", str(tmp_path), "web", "--", "true")
        else:
            proc = pspy(*args, "--jail", str(tmp_path))
        assert proc.returncode == 1, args
        assert "no plan found" in proc.stderr and str(tmp_path) in proc.stderr
        assert "Traceback" not in proc.stderr


def test_missing_app_folder_is_a_clear_error(tmp_path):
    proc = pspy("bootstrap", str(tmp_path / "nope"), "--jail", str(tmp_path / "jail"))
    assert proc.returncode == 1 and "app folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_pspy_toml_names_the_file_and_key(tmp_path):
    app = write_app(tmp_path / "app", {"svc.py": """
        import pspy

        @pspy.service(service_provider="Store")
        def put(k, v):
            pass
        """, "pspy.toml": "jial = '/tmp/x'\n"})
    proc = pspy("bootstrap", app, "--no-run")
    assert proc.returncode == 1
    assert "pspy.toml" in proc.stderr and "jial" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_decorator_is_a_passthrough_without_pspy(tmp_path, monkeypatch):
    monkeypatch.delenv("PSPY_PRINCIPAL", raising=False)
    import pspy as p

    @p.service(service_provider="Bank", perms={"db": 0o700})
    def add(a, b):
        return a + b

    @p.service(service_provider="Auth")
    class Auth:
        def hello(self):
            return "hi"

    assert add(1, 2) == 3 and add.__name__ == "add"
    assert Auth().hello() == "hi"


def test_pspy_toml_perms_for_a_provider_or_in_decimal_are_refused_with_the_file(tmp_path):
    app = write_app(tmp_path / "app", {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank")
        def balance():
            return 1
        """})
    toml = os.path.join(app, "pspy.toml")
    cases = [('perms = { Bank = { "db/" = 0o700 } }', "perms.Bank: pspy.toml gives perms to the front end"),
             ('perms = { web = { "db/" = 770 } }', "read by TOML as a decimal number; write the mode in octal: 0o770"),
             ('perms = { web = "db/" }', "perms.web must be a table of path = mode"),
             ('extra_groups = { web = "Bank" }', "extra_groups.web must be a list of group names")]
    for text, message in cases:
        with open(toml, "w") as f:
            f.write(text + "\n")
        proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
        assert proc.returncode == 1 and message in proc.stderr and toml in proc.stderr, (text, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_pspy_toml_exclude_that_is_not_a_list_of_relative_globs_is_refused_with_the_file(tmp_path):
    app = write_app(tmp_path / "app", {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank")
        def balance():
            return 1
        """})
    toml = os.path.join(app, "pspy.toml")
    cases = [('exclude = "legacy/"', "exclude must be a list"),
             ('exclude = [""]', "exclude must be a list of non-empty globs"),
             ('exclude = [3]', "exclude must be a list of non-empty globs"),
             ('exclude = ["/etc/"]', "exclude glob '/etc/' is absolute"),
             ('exclude = ["a\\u0000b"]', "contains a NUL byte")]
    for text, message in cases:
        with open(toml, "w") as f:
            f.write(text + "\n")
        proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--no-run")
        assert proc.returncode == 1 and message in proc.stderr and toml in proc.stderr, (text, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not os.path.exists(tmp_path / "jail")


SERVICE_APP = {"svc.py": "import pspy\n\n@pspy.service(service_provider='Bank')\ndef balance():\n    return 1\n"}


@pytest.mark.parametrize("where", ["--jail", "pspy.toml"])
def test_a_relative_jail_is_refused_and_nothing_is_built_in_the_current_folder(tmp_path, where):
    app = write_app(tmp_path / "app", dict(SERVICE_APP, **({"pspy.toml": 'jail = "jail"\n'}
                                                           if where == "pspy.toml" else {})))
    flags = ["--jail", "jail"] if where == "--jail" else []
    proc = subprocess.run([sys.executable, "-m", "pspy", "bootstrap", app, *flags, "--namespaces", "--no-run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ("pspy: error: jail 'jail' must be an absolute path (pspy does not build a jail "
                           "under the current folder)\n")
    assert sorted(os.listdir(tmp_path)) == ["app"]   # no jail here, nor in the app
    assert sorted(os.listdir(app)) == sorted(["svc.py"] + (["pspy.toml"] if where == "pspy.toml" else []))
    # control: the same bootstrap with an absolute jail goes past that check
    proc = subprocess.run([sys.executable, "-m", "pspy", "bootstrap", app, "--jail", str(tmp_path / "jail"),
                           "--namespaces", "--no-run"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "must be an absolute path" not in proc.stderr


def test_a_syntax_error_in_a_service_module_comes_first_in_the_cli_error(tmp_path):
    app = write_app(tmp_path / "app", {
        "auth.py": "import pspy\n\n@pspy.service(service_provider='Auth', callers=['Bank'])\ndef login(u):\n"
                   "    return u\n",
        "bank.py": "import pspy\n\n@pspy.service(service_provider='Bank')\ndef transfer(a, b:\n    pass\n"})
    proc = pspy("bootstrap", app, "--jail", str(tmp_path / "jail"), "--namespaces", "--no-run")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("pspy: error: bank.py:4: cannot parse: "), proc.stderr
    assert lines[1].startswith("auth.py:3: callers names 'Bank', which is neither"), proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "jail")
