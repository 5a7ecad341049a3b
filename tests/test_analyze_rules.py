"""The pure parts of pspy analyze: folding files by folder, judging a
verdict, comparing a probe with the report, the expectations and the
score. Real jails and sandboxes are in tests/test_analyze.py."""

import os
import stat

import pytest

from pspy.analyze import access, exposure, findings
from pspy.analyze.expect import check
from pspy.analyze.live import compare
from pspy.analyze.text import collapse
from pspy.errors import ConfigError


def test_a_folder_whose_entries_all_mean_the_same_stands_for_them():
    verdicts = {"./": "r-x", "app.py": "r--", "static/": "r-x", "static/a.css": "r--", "static/img/": "r-x",
                "static/img/x.png": "r--", "db/": "r-x", "db/bank/": "rwx", "db/bank/bank.db": "rw-",
                "db/cred/": "---", "db/cred/cred.db": "---"}
    assert collapse(verdicts) == [
        ("read-only", "./", None), ("read-only", "app.py", None), ("read-only", "static/", 3),
        ("read-only", "db/", None), ("read-write", "db/bank/", 1), ("no access", "db/cred/", 1)]


@pytest.mark.parametrize("bits,folder,reachable,expected", [
    (7, True, True, "rwx"), (6, True, True, "r--"),   # a folder's w needs x
    (3, True, True, "-wx"), (6, False, True, "rw-"), (7, False, False, "---"), (5, False, True, "r-x")])
def test_a_verdict_follows_the_bits_and_the_search_above(bits, folder, reachable, expected):
    assert access.verdict(bits, folder, reachable) == expected


def test_exactly_one_class_of_bits_applies():
    st = os.stat_result((stat.S_IFREG | 0o604, 0, 0, 1, 1000, 2000, 0, 0, 0, 0))
    assert access.Identity("owner", 1000, 5, ()).bits(st) == 6
    assert access.Identity("grouped", 1001, 2000, ()).bits(st) == 0     # group bits, not other
    assert access.Identity("extra", 1001, 5, (2000,)).bits(st) == 0     # a supplementary group too
    assert access.Identity("other", 1001, 5, ()).bits(st) == 4
    assert access.Identity("root", 0, 0, ()).bits(st) == 7


def entry(**kw):
    base = {"name": "web", "kind": "front_end", "uid": 40000, "files": {"./": "r-x", "a.py": "r--"},
            "may_call": ["Bank.transfer"], "may_call_providers": ["Bank"], "network": "host",
            "writable": [], "readable": ["./", "a.py"], "reaches": [], "limits": {},
            "seccomp": {"profile": "web", "source": "shipped", "default_action": "SCMP_ACT_ERRNO (1)",
                        "allowed": ["read", "socket(arg0 == AF_INET)"], "allows": 2, "dangerous": []},
            "exposure": {"score": 4.5, "rating": "medium", "top": ["host network"]}}
    base.update(kw)
    return base


def test_a_probe_that_disagrees_with_the_report_is_named_both_ways():
    seen = {"files": {"./": ["ok", "EACCES"], "a.py": ["ok", "ok"]},
            "calls": {"Bank": {"transfer": "connect: ENOENT", "balance": True}}, "network": "EPERM"}
    result = compare(entry(), seen)
    assert result["checks"] == 4 + 2 + 1
    got = {(d["what"], d["subject"], d["claimed"], d["observed"]) for d in result["disagreements"]}
    assert got == {("file", "a.py", "cannot", "can"), ("call", "Bank.transfer", "can", "cannot (connect: ENOENT)"),
                   ("call", "Bank.balance", "cannot", "can"), ("network", "TCP to the host's loopback", "can",
                                                             "cannot (EPERM)")}
    # Control: a probe that saw what the report says agrees.
    agreeing = {"files": {"./": ["ok", "EACCES"], "a.py": ["ok", "EROFS"]},
                "calls": {"Bank": {"transfer": True}}, "network": "ok"}
    assert compare(entry(), agreeing)["disagreements"] == []


def test_expectations_hold_or_name_what_breaks_them():
    data = {"principals": [entry(), entry(name="Bank", kind="provider", files={"./": "r-x", "a.py": "rw-"},
                                          may_call=[], may_call_providers=[], writable=["a.py"],
                                          network="none (loopback only)", limits={"memory": 1 << 20})],
            "findings": []}
    assert check({"principals": {"Bank": {"network": False, "memory_at_most": "1M", "may_call": []}},
                  "files": [{"under": "a.py", "writable_only_by": ["Bank"]}]}, data, "e.toml") == []
    broken = check({"principals": {"web": {"may_call": [], "max_exposure": 2}},
                    "files": [{"under": "a.py", "readable_only_by": ["Bank"]}],
                    "all": {"denies_syscalls": ["socket"]}}, data, "e.toml")
    assert broken == [
        "files[0] (under = 'a.py'): readable_only_by ['Bank'], but web can read a.py",
        "principals.web.may_call = []: web may also call Bank",
        "principals.web.max_exposure = 2: web's exposure is 4.5 (host network)",
        "all.denies_syscalls: web's policy (shipped) allows socket",
        "all.denies_syscalls: Bank's policy (shipped) allows socket",
    ]
    assert check({"files": [{"under": "nope/", "readable_only_by": ["Bank"]}]}, data, "e.toml") == [
        "files[0] (under = 'nope/'): no file of the app is at or under nope/"]
    with pytest.raises(ConfigError, match="e.toml: principals.Ghost: 'Ghost' is not a principal"):
        check({"principals": {"Ghost": {}}}, data, "e.toml")


def test_the_score_adds_weights_and_caps_at_ten():
    shut = exposure.score(entry(network="none (loopback only)", limits={"memory": 1, "processes": 1}),
                          "namespaces", False)
    assert shut == {"score": 0.0, "rating": "ok", "reasons": [], "top": []}
    root = exposure.score(entry(uid=0, seccomp={"profile": "none"}), "chroot", True)
    assert root["score"] == 10.0 and root["rating"] == "unsafe" and root["top"][0] == "runs as uid 0"


def test_a_path_the_front_end_and_a_provider_both_write_is_named_once_at_its_top():
    ps = [entry(writable=["up/", "up/a", "up/b", "x"]),
          entry(name="Store", kind="provider", writable=["up/", "up/a", "up/b", "y"])]
    assert [(f["id"], f["principal"], f["path"]) for f in findings.shared_write(ps)] == [
        ("shared-write", "Store", "up/")]
