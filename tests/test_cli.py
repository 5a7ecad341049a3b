"""The CLI answers user mistakes with one clear line, never a traceback."""

import os

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
