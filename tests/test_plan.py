"""plan: Manifest + options -> ids, groups, callers; stable across re-plans; JSON on disk."""

import json
import os

import pytest

from pspy.discover import Manifest, PermSpec, ProviderSpec, ServiceSpec
from pspy.errors import PlanError
from pspy.plan import MAX_ID, Options, Plan, build_plan, plan_path


def provider(name, services=("work",), group=None, extra_groups=(), perms=None, callers=None):
    specs = [ServiceSpec(name=s, kind="function", module=name.lower(), file=f"{name.lower()}.py",
                         line=3 + i, provider=name, callers=callers)
             for i, s in enumerate(services)]
    return ProviderSpec(name=name, group=group, group_location=f"{name.lower()}.py:3" if group else None,
                        perms={p: PermSpec(p, m, f"{name.lower()}.py:3") for p, m in (perms or {}).items()},
                        extra_groups=list(extra_groups), services=specs)


def manifest(*providers):
    return Manifest(app_root="/srv/zoobank", providers={p.name: p for p in providers})


def zoobank():
    return manifest(
        provider("Bank", services=("transfer", "balance"), group="BankGroup",
                 perms={"db/bank/": 0o700}, callers=["web"]),
        provider("Auth", services=("login",), perms={"db/cred/": 0o700}, extra_groups=["Logs"]),
    )


def test_front_end_takes_uid_base_then_providers_in_sorted_order():
    plan = build_plan(zoobank(), Options(uid_base=50000, gid_base=60000))
    assert [(p.name, p.kind, p.uid) for p in plan.principals] == [
        ("web", "front_end", 50000), ("Auth", "provider", 50001), ("Bank", "provider", 50002)]


def test_each_group_name_gets_its_own_gid_from_gid_base():
    plan = build_plan(zoobank(), Options(uid_base=50000, gid_base=60000))
    assert sorted(plan.groups) == ["Auth", "BankGroup", "Logs", "web"]
    assert sorted(plan.groups.values()) == [60000, 60001, 60002, 60003]


def test_a_principals_own_group_has_its_uid_number_and_shared_groups_come_after():
    # The Unix convention: gid == uid for a principal's own group, so no gid
    # reads as another principal's uid.
    plan = build_plan(zoobank(), Options(uid_base=50000, gid_base=50000))
    for p in plan.principals:
        assert p.gid == p.uid, p.name
    uids = {p.uid for p in plan.principals}
    assert plan.groups["Logs"] not in uids and plan.groups["Logs"] > max(uids)
    # Two providers with one primary group: it is nobody's own, so it comes after too.
    shared = build_plan(manifest(provider("Auth", group="Shared"), provider("Bank", group="Shared")),
                        Options(uid_base=50000, gid_base=50000))
    assert shared.groups["Shared"] > max(p.uid for p in shared.principals)
    assert shared.principal("web").gid == shared.principal("web").uid


def test_provider_gid_is_its_group_and_default_group_is_its_name():
    plan = build_plan(zoobank(), Options())
    bank, auth, web = plan.principal("Bank"), plan.principal("Auth"), plan.principal("web")
    assert (bank.group, bank.gid) == ("BankGroup", plan.groups["BankGroup"])
    assert (auth.group, auth.gid) == ("Auth", plan.groups["Auth"])
    assert (web.group, web.gid) == ("web", plan.groups["web"])
    assert len({bank.gid, auth.gid, web.gid}) == 3


def test_providers_naming_one_group_share_its_gid():
    plan = build_plan(manifest(provider("Bank", group="Shared"), provider("Auth", group="Shared")), Options())
    assert plan.principal("Bank").gid == plan.principal("Auth").gid == plan.groups["Shared"]
    assert plan.principal("Bank").uid != plan.principal("Auth").uid


def test_extra_groups_get_gids_and_become_supplementary_groups():
    plan = build_plan(zoobank(), Options())
    auth = plan.principal("Auth")
    assert auth.extra_groups == ["Logs"]
    assert auth.groups == [plan.groups["Logs"]]
    assert plan.groups["Logs"] not in (auth.gid, plan.principal("Bank").gid, plan.principal("web").gid)
    assert plan.principal("Bank").groups == []
    assert plan.principal("web").groups == []


def test_callers_default_to_every_other_principal():
    plan = build_plan(zoobank(), Options())
    assert plan.principal("Auth").service("login").callers == ["web", "Bank"]


def test_explicit_callers_are_kept():
    plan = build_plan(zoobank(), Options())
    bank = plan.principal("Bank")
    assert bank.service("transfer").callers == ["web"]
    assert bank.service("balance").callers == ["web"]


def test_explicit_empty_callers_means_nobody():
    plan = build_plan(manifest(provider("Bank", callers=[])), Options())
    assert plan.principal("Bank").service("work").callers == []


def test_providers_get_a_socket_and_their_perms_and_modules():
    plan = build_plan(zoobank(), Options())
    bank = plan.principal("Bank")
    assert bank.socket == "/.pspy/sock/Bank/rpc.sock"
    assert [(p.pattern, p.mode) for p in bank.perms] == [("db/bank/", 0o700)]
    assert bank.modules == ["bank"]
    assert plan.principal("web").socket is None


def test_adding_a_provider_that_sorts_first_keeps_existing_ids():
    first = build_plan(zoobank(), Options())
    grown = manifest(*zoobank().providers.values(), provider("Aaa", group="AaaGroup", extra_groups=["Aardvarks"]))
    second = build_plan(grown, Options(), previous=first)
    for p in first.principals:
        again = second.principal(p.name)
        assert (again.uid, again.gid, again.groups) == (p.uid, p.gid, p.groups), p.name
    for name, gid in first.groups.items():
        assert second.groups[name] == gid, name
    aaa = second.principal("Aaa")
    assert aaa.uid not in {p.uid for p in first.principals}
    assert {second.groups["AaaGroup"], second.groups["Aardvarks"]}.isdisjoint(first.groups.values())


def test_without_previous_a_new_provider_that_sorts_first_shifts_ids():
    # The counterpart of the test above: it shows that `previous` is what keeps ids stable.
    first = build_plan(zoobank(), Options())
    grown = manifest(*zoobank().providers.values(), provider("Aaa"))
    second = build_plan(grown, Options())
    assert second.principal("Auth").uid != first.principal("Auth").uid


def test_a_removed_provider_does_not_move_the_others():
    first = build_plan(zoobank(), Options())
    shrunk = manifest(zoobank().providers["Bank"])
    second = build_plan(shrunk, Options(), previous=first)
    assert second.principal("Bank").uid == first.principal("Bank").uid
    assert second.principal("web").uid == first.principal("web").uid
    assert second.groups["BankGroup"] == first.groups["BankGroup"]


def test_changing_uid_base_reallocates_from_the_new_base():
    first = build_plan(zoobank(), Options(uid_base=40000, gid_base=40000))
    second = build_plan(zoobank(), Options(uid_base=50000, gid_base=60000), previous=first)
    assert [p.uid for p in second.principals] == [50000, 50001, 50002]
    assert sorted(second.groups.values()) == [60000, 60001, 60002, 60003]
    assert {p.gid - 60000 for p in second.principals if p.name != "Bank"} == \
        {p.uid - 50000 for p in second.principals if p.name != "Bank"}


@pytest.mark.parametrize("field", ["uid_base", "gid_base"])
@pytest.mark.parametrize("base", [0, 999, MAX_ID - 10000 + 1, 2**32])
def test_base_outside_the_safe_range_is_refused(field, base):
    with pytest.raises(PlanError) as info:
        build_plan(zoobank(), Options(**{field: base}))
    assert str(base) in str(info.value)


@pytest.mark.parametrize("base", [1000, MAX_ID - 10000])
def test_bases_at_the_edges_of_the_safe_range_are_accepted(base):
    plan = build_plan(zoobank(), Options(uid_base=base, gid_base=base))
    assert plan.principal("web").uid == base
    assert max(p.uid for p in plan.principals) <= MAX_ID


def test_env_for_an_unknown_principal_is_refused():
    with pytest.raises(PlanError) as info:
        build_plan(zoobank(), Options(env={"Bnak": ["DATABASE_URL"]}))
    assert "Bnak" in str(info.value)


def test_env_is_given_to_the_named_principal_only():
    plan = build_plan(zoobank(), Options(env={"Bank": ["DATABASE_URL"], "web": ["PORT"]}))
    assert plan.principal("Bank").env == ["DATABASE_URL"]
    assert plan.principal("web").env == ["PORT"]
    assert plan.principal("Auth").env == []


def test_plan_survives_a_json_round_trip():
    plan = build_plan(zoobank(), Options(jail="/tmp/jail", front_end=["python", "app.py"],
                                         env={"Bank": ["X"]}, script="app.py", files=["static/"],
                                         interpreter="/usr/bin/python3", app_name="zoobank"))
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    assert again.principal("Bank").service("transfer").callers == ["web"]


def test_plan_from_another_version_is_refused():
    data = json.loads(build_plan(zoobank(), Options()).to_json())
    data["version"] = 999
    with pytest.raises(PlanError):
        Plan.from_dict(data)


def test_load_reads_the_plan_saved_in_the_jail(tmp_path):
    plan = build_plan(zoobank(), Options(jail=str(tmp_path)))
    os.makedirs(os.path.dirname(plan_path(str(tmp_path))))
    with open(plan_path(str(tmp_path)), "w") as f:
        f.write(plan.to_json())
    assert Plan.load(str(tmp_path)) == plan


def test_load_without_a_plan_names_the_path(tmp_path):
    with pytest.raises(PlanError) as info:
        Plan.load(str(tmp_path))
    assert plan_path(str(tmp_path)) in str(info.value)


def test_load_of_a_corrupt_plan_is_a_plan_error_naming_the_path(tmp_path):
    os.makedirs(os.path.dirname(plan_path(str(tmp_path))))
    with open(plan_path(str(tmp_path)), "w") as f:
        f.write("{not json")
    with pytest.raises(PlanError) as info:
        Plan.load(str(tmp_path))
    assert plan_path(str(tmp_path)) in str(info.value)


def test_unknown_principal_lookup_lists_the_principals():
    with pytest.raises(PlanError) as info:
        build_plan(zoobank(), Options()).principal("Nope")
    assert "Nope" in str(info.value) and "Bank" in str(info.value)


# --- the front end's perms and groups (pspy.toml) ----------------------------

def test_front_end_gets_the_perms_group_and_extra_groups_pspy_toml_gives_it():
    plan = build_plan(zoobank(), Options(front_end_perms={"uploads/": 0o700, "db/./profiles/": 0o770},
                                         front_end_group="Front", front_end_extra_groups=["BankGroup"]))
    web = plan.principal("web")
    assert [(p.pattern, p.mode, p.location) for p in web.perms] == [
        ("db/profiles/", 0o770, "pspy.toml perms.web"), ("uploads/", 0o700, "pspy.toml perms.web")]
    assert (web.group, web.gid) == ("Front", plan.groups["Front"])
    assert web.groups == [plan.groups["BankGroup"]] == [plan.principal("Bank").gid]
    assert "web" not in plan.groups   # the default group is not made when another is named


def test_front_end_without_settings_keeps_its_own_group_and_no_perms():
    web = build_plan(zoobank(), Options()).principal("web")
    assert (web.group, web.perms, web.groups) == ("web", [], [])


@pytest.mark.parametrize("perms, message", [
    ({"db/bank/": 0o700}, "'db/bank/' is also claimed by provider 'Bank' at bank.py:3"),
    ({"db/bank": 0o700}, "also claimed by provider 'Bank'"),
    ({"/etc/": 0o700}, "is absolute"),
    ({"../up/": 0o700}, "leaves the app root"),
    ({"uploads/": 0o4700}, "setuid, setgid and sticky bits are refused"),
    ({"uploads/": "0o700"}, "must be an octal integer"),
])
def test_unsafe_or_contested_front_end_perms_are_refused_naming_pspy_toml(perms, message):
    with pytest.raises(PlanError) as info:
        build_plan(zoobank(), Options(front_end_perms=perms))
    assert "pspy.toml perms.web" in str(info.value) and message in str(info.value)


def test_a_front_end_group_that_is_not_a_name_is_refused():
    with pytest.raises(PlanError, match="group.web: '../x' is not a group name"):
        build_plan(zoobank(), Options(front_end_group="../x"))
