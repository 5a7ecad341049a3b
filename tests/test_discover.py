"""discover: @pspy.service declarations read from the app's source, never imported."""

import pytest

from conftest import write_app
from pspy.discover import discover, is_excluded
from pspy.errors import DiscoveryError


def problems_of(root, exclude=()):
    with pytest.raises(DiscoveryError) as info:
        discover(root, exclude=exclude)
    return info.value.problems


def only_problem(root):
    problems = problems_of(root)
    assert len(problems) == 1, problems
    return problems[0]


# --- spellings of the decorator -------------------------------------------

@pytest.mark.parametrize("header, deco", [
    ("import pspy", "pspy.service"),
    ("import pspy as p", "p.service"),
    ("from pspy import service", "service"),
    ("from pspy import service as svc", "svc"),
])
def test_every_import_spelling_of_the_decorator_is_found(tmp_path, header, deco):
    root = write_app(tmp_path, {"bank.py": f"""\
        {header}

        @{deco}(service_provider="Bank")
        def transfer(sender, recipient, zoobars):
            pass
        """})
    manifest = discover(root)
    assert list(manifest.providers) == ["Bank"]
    spec = manifest.service("Bank", "transfer")
    assert (spec.kind, spec.module, spec.file, spec.line) == ("function", "bank", "bank.py", 3)
    assert spec.location == "bank.py:3"


def test_a_decorator_named_service_from_elsewhere_is_not_a_pspy_service(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy
        from other import service

        @service(service_provider="Bank")
        def transfer():
            pass
        """})
    assert discover(root).providers == {}


def test_a_file_that_does_not_import_pspy_is_ignored(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import other as pspy_like

        @pspy_like.service(service_provider="Bank")
        def transfer():
            pass
        """})
    assert discover(root).providers == {}


def test_module_name_of_a_package_file_is_dotted(tmp_path):
    root = write_app(tmp_path, {"pkg/__init__.py": "", "pkg/bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank")
        def transfer():
            pass
        """})
    spec = discover(root).service("Bank", "transfer")
    assert (spec.module, spec.file) == ("pkg.bank", "pkg/bank.py")


# --- kinds of services ----------------------------------------------------

def test_async_function_service_has_kind_async_function(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank")
        async def balance(username):
            return 0
        """})
    assert discover(root).service("Bank", "balance").kind == "async_function"


def test_class_service_lists_public_methods_and_not_private_ones(tmp_path):
    root = write_app(tmp_path, {"auth.py": """\
        import pspy

        @pspy.service(service_provider="Auth")
        class Auth:
            def __init__(self):
                pass

            def login(self, username, password):
                pass

            async def register(self, username, password):
                pass

            def _hash(self, password):
                pass

            def __repr__(self):
                return "Auth"
        """})
    spec = discover(root).service("Auth", "Auth")
    assert spec.kind == "class"
    assert spec.methods == ("login", "register")


# --- merging the services of one provider ---------------------------------

def test_services_of_one_provider_are_merged(tmp_path):
    root = write_app(tmp_path, {
        "bank.py": """\
            import pspy

            @pspy.service(service_provider="Bank", group="BankGroup",
                          perms={"db/bank/": 0o700}, extra_groups=["Logs"])
            def transfer():
                pass
            """,
        "more_bank.py": """\
            import pspy

            @pspy.service(service_provider="Bank", perms={"db/audit/": 0o700, "db/bank/": 0o700},
                          extra_groups=["Logs", "Audit"])
            def balance():
                pass
            """})
    manifest = discover(root)
    assert list(manifest.providers) == ["Bank"]
    bank = manifest.providers["Bank"]
    assert sorted(s.name for s in bank.services) == ["balance", "transfer"]
    assert bank.group == "BankGroup"
    assert bank.group_location == "bank.py:3"
    assert {p: spec.mode for p, spec in bank.perms.items()} == {"db/bank/": 0o700, "db/audit/": 0o700}
    assert sorted(bank.extra_groups) == ["Audit", "Logs"]


def test_services_of_different_providers_stay_apart(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Auth", perms={"db/cred/": 0o700}, callers=["web", "Bank"])
        def login():
            pass
        """})
    manifest = discover(root)
    assert sorted(manifest.providers) == ["Auth", "Bank"]
    assert list(manifest.providers["Bank"].perms) == ["db/bank/"]
    assert list(manifest.providers["Auth"].perms) == ["db/cred/"]
    assert manifest.service("Auth", "login").callers == ("web", "Bank")
    assert manifest.service("Bank", "transfer").callers is None


# --- errors carry file:line -----------------------------------------------

def test_non_literal_argument_points_at_its_own_line(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy
        PERMS = {"db/bank/": 0o700}

        @pspy.service(service_provider="Bank",
                      group="BankGroup",
                      perms=PERMS)
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:6"
    assert "perms" in message and "literal" in message and "PERMS" in message


def test_unknown_keyword_is_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank", grup="BankGroup")
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:3"
    assert "grup" in message


def test_positional_argument_is_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service("Bank")
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:3"
    assert "keyword" in message


def test_missing_service_provider_is_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service(group="BankGroup")
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:3"
    assert "service_provider" in message


def test_decorator_without_arguments_is_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service
        def transfer():
            pass
        """})
    location, _ = only_problem(root)
    assert location == "bank.py:3"


def test_group_conflict_names_both_lines(tmp_path):
    root = write_app(tmp_path, {
        "a.py": """\
            import pspy

            @pspy.service(service_provider="Bank", group="BankGroup")
            def transfer():
                pass
            """,
        "b.py": """\
            import pspy


            @pspy.service(service_provider="Bank", group="OtherGroup")
            def balance():
                pass
            """})
    location, message = only_problem(root)
    text = f"{location}: {message}"
    assert "a.py:3" in text and "b.py:4" in text
    assert "BankGroup" in message and "OtherGroup" in message


def test_same_perms_path_with_two_modes_is_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Bank", perms={"db/./bank/": 0o750})
        def balance():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:7"
    assert "bank.py:3" in message
    assert "0o700" in message and "0o750" in message


def test_same_perms_path_with_the_same_mode_is_fine(tmp_path):
    root = write_app(tmp_path, {"bank.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def balance():
            pass
        """})
    assert list(discover(root).providers["Bank"].perms) == ["db/bank/"]


@pytest.mark.parametrize("path, words", [
    ("/etc/shadow", "absolute"),
    ("../../etc/shadow", "leaves the app root"),
    ("db/../../x", "leaves the app root"),
    ("db/..", "app root"),
    (".pspy/plan.json", "state folder"),
])
def test_perms_path_outside_the_app_is_refused(tmp_path, path, words):
    root = write_app(tmp_path, {"bank.py": f"""\
        import pspy

        @pspy.service(service_provider="Bank", perms={{{path!r}: 0o700}})
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:3"
    assert words in message and path in message


@pytest.mark.parametrize("mode", ["0o4755", "0o2770", "0o1777", "-1", "True", "'0o700'"])
def test_mode_that_is_not_a_plain_permission_is_refused(tmp_path, mode):
    root = write_app(tmp_path, {"bank.py": f"""\
        import pspy

        @pspy.service(service_provider="Bank", perms={{"db/bank/": {mode}}})
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "bank.py:3"
    assert "db/bank/" in message


def test_provider_named_web_is_reserved_for_the_front_end(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="web")
        def index():
            pass
        """})
    location, message = only_problem(root)
    assert location == "app.py:3"
    assert "reserved" in message


def test_seccomp_is_read_from_the_decorator_and_must_agree_within_a_provider(tmp_path):
    root = write_app(tmp_path, {"auth.py": """\
        import pspy

        @pspy.service(service_provider="Auth", seccomp="strict")
        def login():
            pass

        @pspy.service(service_provider="Auth", seccomp={"allow": ["ptrace"]})
        def register():
            pass

        @pspy.service(service_provider="Bank", seccomp=42)
        def transfer():
            pass
        """})
    problems = problems_of(root)
    assert [location for location, _ in problems] == ["auth.py:7", "auth.py:11"]
    assert "seccomp='strict' at auth.py:3" in problems[0][1] and "one filter" in problems[0][1]
    assert "seccomp must be" in problems[1][1]
    good = write_app(tmp_path / "good", {"auth.py": """\
        import pspy

        @pspy.service(service_provider="Auth", seccomp={"deny": ["socket"], "default_action": "kill"})
        def login():
            pass
        """})
    spec = discover(good).providers["Auth"]
    assert spec.seccomp == {"deny": ["socket"], "default_action": "kill"} and spec.seccomp_location == "auth.py:3"


def test_service_not_at_module_top_level_is_an_error(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        def make():
            @pspy.service(service_provider="Bank")
            def transfer():
                pass
            return transfer
        """})
    location, message = only_problem(root)
    assert location == "app.py:4"
    assert "transfer" in message and "top level" in message


def test_decorated_method_inside_a_class_is_not_top_level(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        class Bank:
            @pspy.service(service_provider="Bank")
            def transfer(self):
                pass
        """})
    location, _ = only_problem(root)
    assert location == "app.py:4"


def test_unknown_caller_name_is_an_error(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", callers=["web", "Bnak"])
        def transfer():
            pass
        """})
    location, message = only_problem(root)
    assert location == "app.py:3"
    assert "Bnak" in message


def test_callers_may_name_the_front_end_and_other_providers(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", callers=["web", "Auth"])
        def transfer():
            pass

        @pspy.service(service_provider="Auth", callers=[])
        def login():
            pass
        """})
    manifest = discover(root)
    assert manifest.service("Bank", "transfer").callers == ("web", "Auth")
    assert manifest.service("Auth", "login").callers == ()


def test_two_providers_claiming_the_same_path_is_an_error(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/shared/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Auth", perms={"db/./shared/": 0o700})
        def login():
            pass
        """})
    location, message = only_problem(root)
    text = f"{location}: {message}"
    assert "app.py:3" in text and "app.py:7" in text
    assert "db/shared/" in message


def test_two_providers_claiming_one_folder_with_and_without_trailing_slash_is_an_error(tmp_path):
    # A trailing '/' ("a folder") must not hide a second claim on the same
    # path: jail.plan_ownership would let one provider's claim silently win.
    # (Found as a bug in _merge, which compared keys with the '/' kept.)
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Auth", perms={"db/bank": 0o700})
        def login():
            pass
        """})
    location, message = only_problem(root)
    assert "db/bank" in message


def test_one_provider_giving_a_folder_two_modes_with_and_without_trailing_slash_is_an_error(tmp_path):
    root = write_app(tmp_path, {"app.py": """\
        import pspy

        @pspy.service(service_provider="Bank", perms={"db/bank/": 0o700})
        def transfer():
            pass

        @pspy.service(service_provider="Bank", perms={"db/bank": 0o750})
        def balance():
            pass
        """})
    location, message = only_problem(root)
    assert location == "app.py:7"
    assert "0o700" in message and "0o750" in message


def test_duplicate_service_name_in_one_provider_is_an_error(tmp_path):
    root = write_app(tmp_path, {
        "a.py": """\
            import pspy

            @pspy.service(service_provider="Bank")
            def transfer():
                pass
            """,
        "b.py": """\
            import pspy

            @pspy.service(service_provider="Bank")
            def transfer():
                pass
            """})
    location, message = only_problem(root)
    text = f"{location}: {message}"
    assert "a.py:3" in text and "b.py:3" in text
    assert "transfer" in message


def test_same_service_name_in_two_providers_is_fine(tmp_path):
    root = write_app(tmp_path, {
        "a.py": """\
            import pspy

            @pspy.service(service_provider="Bank")
            def status():
                pass
            """,
        "b.py": """\
            import pspy

            @pspy.service(service_provider="Auth")
            def status():
                pass
            """})
    manifest = discover(root)
    assert manifest.service("Bank", "status").file == "a.py"
    assert manifest.service("Auth", "status").file == "b.py"


def test_syntax_error_is_reported_with_its_line(tmp_path):
    root = write_app(tmp_path, {"app.py": "import pspy\n\ndef broken(:\n    pass\n"})
    location, message = only_problem(root)
    assert location == "app.py:3"
    assert "parse" in message


def test_every_problem_of_the_app_is_reported_together(tmp_path):
    root = write_app(tmp_path, {
        "a.py": """\
            import pspy
            PERMS = {}

            @pspy.service(service_provider="Bank", perms=PERMS)
            def transfer():
                pass

            @pspy.service(service_provider="web")
            def index():
                pass
            """,
        "b.py": """\
            import pspy

            @pspy.service(service_provider="Auth", perms={"/etc/shadow": 0o600})
            def login():
                pass

            @pspy.service(service_provider="Auth", sandbox="default")
            def register():
                pass
            """})
    problems = problems_of(root)
    assert [location for location, _ in problems] == ["a.py:4", "a.py:8", "b.py:3", "b.py:7"]
    assert "must be a literal" in str(problems) and "reserved" in str(problems)


def test_app_root_that_is_not_a_folder_is_an_error(tmp_path):
    problems = problems_of(str(tmp_path / "missing"))
    assert problems == [(str(tmp_path / "missing"), "not a directory")]


def test_skipped_folders_are_not_read(tmp_path):
    bad = """\
        import pspy

        @pspy.service(service_provider="web")
        def index():
            pass
        """
    root = write_app(tmp_path, {".venv/lib/x.py": bad, "__pycache__/y.py": bad, ".hidden/z.py": bad,
                                "app.py": "import pspy\n"})
    assert discover(root).providers == {}


def test_network_must_be_a_bool_and_agree_within_a_provider(tmp_path):
    root = write_app(tmp_path, {"svc.py": """\
        import pspy

        @pspy.service(service_provider="Fetch", network=True)
        def get(url):
            pass

        @pspy.service(service_provider="Fetch", network=False)
        def head(url):
            pass

        @pspy.service(service_provider="Other", network="yes")
        def other():
            pass
        """})
    with pytest.raises(DiscoveryError) as info:
        discover(root)
    problems = dict(info.value.problems)
    assert "network=True at svc.py:3" in problems["svc.py:7"]
    assert "True or False" in problems["svc.py:11"]


# --- real app folders: unparsable leftovers and exclude --------------------

SERVICE = """\
    import pspy

    @pspy.service(service_provider="Bank")
    def transfer():
        pass
    """

# A decorator mistake (a non-literal argument): an error wherever discovery reads it.
BROKEN_SERVICE = """\
    import pspy
    PERMS = {}

    @pspy.service(service_provider="Bank", perms=PERMS)
    def refund():
        pass
    """


def test_unparsable_file_that_does_not_mention_pspy_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "legacy/old.py": "x = 1\n\ndef broken(:\n    pass\n"})
    manifest = discover(root)
    assert list(manifest.providers) == ["Bank"]
    assert manifest.warnings == ["legacy/old.py:3: skipped: not Python 3 source (invalid syntax) "
                                 "and it does not mention pspy"]


def test_a_parsable_app_has_no_warnings(tmp_path):
    assert discover(write_app(tmp_path, {"bank.py": SERVICE})).warnings == []


def test_unparsable_file_that_mentions_pspy_is_still_an_error(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "auth.py": "# uses pspy\nx = 1\ndef broken(:\n    pass\n"})
    location, message = only_problem(root)
    assert location == "auth.py:3" and "cannot parse" in message


def test_python_2_print_statement_file_is_skipped(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "tools/report.py": 'import sys\n\nprint "x"\n'})
    manifest = discover(root)
    assert list(manifest.providers) == ["Bank"]
    [warning] = manifest.warnings
    assert warning.startswith("tools/report.py:3: skipped: not Python 3 source (")
    assert "print" in warning and warning.endswith("and it does not mention pspy")


def test_file_with_a_nul_byte_is_skipped_with_the_line_of_the_nul(tmp_path):
    write_app(tmp_path, {"bank.py": SERVICE})
    (tmp_path / "blob.py").write_bytes(b"header = 1\nsecond = 2\n\x00\x01binary\n")
    manifest = discover(str(tmp_path))
    assert list(manifest.providers) == ["Bank"]
    [warning] = manifest.warnings
    assert warning.startswith("blob.py:3: skipped: not Python 3 source (") and "null" in warning


def test_file_with_a_nul_byte_that_mentions_pspy_is_an_error(tmp_path):
    write_app(tmp_path, {"bank.py": SERVICE})
    (tmp_path / "blob.py").write_bytes(b"import pspy\n\x00\n")
    location, message = only_problem(str(tmp_path))
    assert location == "blob.py:2" and "cannot parse" in message


@pytest.mark.parametrize("glob", ["broken", "broken/", "./broken/"])
def test_excluded_folder_with_or_without_trailing_slash_is_not_read(tmp_path, glob):
    root = write_app(tmp_path, {"bank.py": SERVICE, "broken/refund.py": BROKEN_SERVICE,
                                "broken/deep/more.py": BROKEN_SERVICE})
    assert problems_of(root)   # control: read, it is an error
    manifest = discover(root, exclude=[glob])
    assert list(manifest.providers) == ["Bank"] and manifest.warnings == []


def test_excluded_file_glob_matches_at_any_depth(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "page.tmpl.py": BROKEN_SERVICE,
                                "pkg/view.tmpl.py": BROKEN_SERVICE, "pkg/refund.py": BROKEN_SERVICE})
    assert [loc for loc, _ in problems_of(root)] == ["page.tmpl.py:4", "pkg/refund.py:4", "pkg/view.tmpl.py:4"]
    # Only the file not matching the glob is still read.
    assert [loc for loc, _ in problems_of(root, exclude=["*.tmpl.py"])] == ["pkg/refund.py:4"]


def test_excluded_file_that_would_be_a_decorator_error_is_ignored(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "refund.py": BROKEN_SERVICE})
    assert only_problem(root)[0] == "refund.py:4"   # control
    manifest = discover(root, exclude=["refund.py"])
    assert list(manifest.providers) == ["Bank"]
    assert [s.name for s in manifest.providers["Bank"].services] == ["transfer"]


def test_excluded_unparsable_file_gives_no_warning(tmp_path):
    root = write_app(tmp_path, {"bank.py": SERVICE, "legacy/old.py": 'print "x"\n'})
    assert discover(root, exclude=["legacy/"]).warnings == []


@pytest.mark.parametrize("rel, glob, excluded", [
    ("legacy/old.py", "legacy", True),
    ("legacy/old.py", "legacy/", True),
    ("legacy/a/b/old.py", "legacy/", True),
    ("legacy.py", "legacy/", False),           # a trailing '/' names folders only
    ("old.py", "old.py/", False),
    ("app/legacy/old.py", "legacy", False),     # anchored at the app root
    ("app/legacy/old.py", "*/legacy/", True),
    ("legacy/old.py", "*/legacy/", False),
    ("x.tmpl.py", "*.tmpl.py", True),
    ("a/b/x.tmpl.py", "*.tmpl.py", True),       # fnmatch's '*' crosses '/'
    ("legacy/a/old.py", "legacy/*.py", True),
    ("Legacy/old.py", "legacy", False),         # case-sensitive
    ("old.py", "./old.py", True),
    ("bank.py", "bank", False),
])
def test_exclude_glob_semantics(rel, glob, excluded):
    assert is_excluded(rel, [glob]) is excluded


def test_a_module_that_cannot_be_parsed_is_reported_before_what_it_breaks(tmp_path):
    # bank.py's syntax error hides provider Bank, so web.py's callers=["Bank"]
    # fails too: the cause is said first, its consequence after.
    write_app(tmp_path, {
        "auth.py": "import pspy\n\n@pspy.service(service_provider='Auth', callers=['Bank'])\ndef login(u):\n"
                   "    return u\n",
        "bank.py": "import pspy\n\n@pspy.service(service_provider='Bank')\ndef transfer(a, b:\n    pass\n"})
    problems = problems_of(tmp_path)
    assert [loc for loc, _ in problems] == ["bank.py:4", "auth.py:3"], problems
    assert problems[0][1].startswith("cannot parse: ")
    assert problems[1][1].startswith("callers names 'Bank', which is neither")
