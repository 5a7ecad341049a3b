"""``pspy analyze --expect FILE``: expectations a CI pipeline asserts on.

The file is TOML. Each rule is checked against the report (the same data
``--format json`` prints); a rule that does not hold gives one violation
naming the rule, the principal and the path or value that breaks it.

    # Files under db/bank/ are Bank's alone.
    [[files]]
    under = "db/bank/"             # a path; a folder stands for everything in it
    readable_only_by = ["Bank"]
    writable_only_by = ["Bank"]

    [principals.web]
    may_call = ["Auth", "Bank"]    # exactly these providers, nothing else
    max_exposure = 6.0

    [principals.Evaluator]
    network = false                # no network but its own loopback
    memory_at_most = "256M"        # a memory limit of at most this

    [all]                          # every principal
    denies_syscalls = ["ptrace"]   # its seccomp policy lets none of these through
    no_findings = ["dangerous-syscall"]   # or true: no finding at all

A key under ``[all]`` may also be given per principal. Unknown tables,
keys or principals are errors naming the file and the key: a rule that
silently matches nothing would pass forever.
"""

from __future__ import annotations

import tomllib

from ..errors import ConfigError
from ..limits import _size

PRINCIPAL_KEYS = {"may_call", "network", "memory_at_most", "max_exposure", "denies_syscalls", "no_findings",
                  "writes_nothing_outside"}
FILE_KEYS = {"under", "readable_only_by", "writable_only_by"}


def load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            rules = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such expectations file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the expectations file: {e.strerror}") from None
    unknown = set(rules) - {"files", "principals", "all"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; known: files, principals, all")
    if not rules:
        raise ConfigError(f"{path}: no expectations in it; an empty file would pass forever")
    return rules


def _names(value, path: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key} must be a list of names, got {value!r}")
    return value


def check(rules: dict, data: dict, path: str) -> list[str]:
    """The violations, each a line; [] when every expectation holds."""
    by_name = {p["name"]: p for p in data["principals"]}

    def principal(name: str, key: str) -> dict:
        if name not in by_name:
            raise ConfigError(f"{path}: {key}: {name!r} is not a principal of this app "
                              f"({', '.join(by_name)})")
        return by_name[name]

    out: list[str] = []
    files = rules.get("files", [])
    if not isinstance(files, list):
        raise ConfigError(f"{path}: files must be an array of tables ([[files]])")
    for i, rule in enumerate(files):
        key = f"files[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{path}: {key} must be a table")
        unknown = set(rule) - FILE_KEYS
        if unknown or "under" not in rule:
            raise ConfigError(f"{path}: {key}: " + (f"unknown key(s) {', '.join(sorted(unknown))}; " if unknown else "")
                              + f"keys are {', '.join(sorted(FILE_KEYS))}, 'under' required")
        under = rule["under"]
        if not isinstance(under, str) or not under:
            raise ConfigError(f"{path}: {key}.under must be a path in the app, got {under!r}")
        if not (FILE_KEYS - {"under"}) & set(rule):
            raise ConfigError(f"{path}: {key}: give readable_only_by or writable_only_by (or both); "
                              "'under' alone expects nothing")
        label = f"{key} (under = {under!r})"
        base = under.rstrip("/")
        matched = [f for f in next(iter(by_name.values()))["files"] if f.rstrip("/") == base
                   or f.startswith(base + "/")]
        if not matched:
            out.append(f"{label}: no file of the app is at or under {under}")
            continue
        for verdict_key, letter, word in (("readable_only_by", "r", "read"), ("writable_only_by", "w", "write")):
            if verdict_key not in rule:
                continue
            allowed = _names(rule[verdict_key], path, f"{key}.{verdict_key}")
            for name in allowed:
                principal(name, f"{key}.{verdict_key}")
            for p in data["principals"]:
                if p["name"] in allowed:
                    continue
                hits = [f for f in matched if letter in p["files"].get(f, "---")]
                if hits:
                    more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
                    out.append(f"{label}: {verdict_key} {allowed}, but {p['name']} can {word} {hits[0]}{more}")
    principals = rules.get("principals", {})
    if not isinstance(principals, dict):
        raise ConfigError(f"{path}: principals must be a table ([principals.NAME])")
    targets: list[tuple[str, str, dict]] = []
    for name, body in principals.items():
        principal(name, f"principals.{name}")
        targets.append((f"principals.{name}", name, body))
    if "all" in rules:
        targets.extend(("all", name, rules["all"]) for name in by_name)
    for table, name, body in targets:
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {table} must be a table")
        unknown = set(body) - PRINCIPAL_KEYS
        if unknown:
            raise ConfigError(f"{path}: {table}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(PRINCIPAL_KEYS))}")
        out.extend(_principal_rules(table, by_name[name], body, data, path, principal))
    return out


def _principal_rules(table: str, p: dict, body: dict, data: dict, path: str, principal) -> list[str]:
    name = p["name"]
    out = []
    if "may_call" in body:
        wanted = set(_names(body["may_call"], path, f"{table}.may_call"))
        for provider in wanted:
            principal(provider, f"{table}.may_call")
        actual = set(p.get("may_call_providers", ()))
        if actual != wanted:
            extra, missing = sorted(actual - wanted), sorted(wanted - actual)
            why = " and ".join(filter(None, [f"may also call {', '.join(extra)}" if extra else "",
                                             f"may not call {', '.join(missing)}" if missing else ""]))
            out.append(f"{table}.may_call = {sorted(wanted)}: {name} {why}")
    if "network" in body:
        if not isinstance(body["network"], bool):
            raise ConfigError(f"{path}: {table}.network must be true or false")
        has = p["network"] == "host"
        if has != body["network"]:
            out.append(f"{table}.network = {str(body['network']).lower()}: {name}'s network is {p['network']}")
    if "memory_at_most" in body:
        most = _size(body["memory_at_most"])
        if most is None:
            raise ConfigError(f"{path}: {table}.memory_at_most must be bytes or a size such as '256M', "
                              f"got {body['memory_at_most']!r}")
        memory = (p.get("limits") or {}).get("memory")
        if memory is None or memory > most:
            out.append(f"{table}.memory_at_most = {body['memory_at_most']!r}: {name}'s memory limit is "
                       + ("none" if memory is None else f"{memory} bytes"))
    if "max_exposure" in body:
        most = body["max_exposure"]
        if isinstance(most, bool) or not isinstance(most, (int, float)) or not 0 <= most <= 10:
            raise ConfigError(f"{path}: {table}.max_exposure must be a number from 0 to 10, got {most!r}")
        score = p["exposure"]["score"]
        if score > body["max_exposure"]:
            out.append(f"{table}.max_exposure = {body['max_exposure']}: {name}'s exposure is {score} "
                       f"({'; '.join(p['exposure']['top'])})")
    if "denies_syscalls" in body:
        sc = p["seccomp"]
        allowed = {a.split("(")[0] for a in sc["allowed"]}
        from .findings import lets_everything_through
        open_all = lets_everything_through(sc)
        from ..seccomp import is_syscall
        for syscall in _names(body["denies_syscalls"], path, f"{table}.denies_syscalls"):
            if not is_syscall(syscall):
                raise ConfigError(f"{path}: {table}.denies_syscalls: {syscall!r} is not a syscall of this "
                                  "machine (names are lower case, as in man 2)")
            if open_all or syscall in allowed:
                out.append(f"{table}.denies_syscalls: {name}'s policy ({sc['source']}) allows {syscall}")
    if "no_findings" in body:
        wanted = body["no_findings"]
        if wanted is True:
            ids = None
        elif isinstance(wanted, list) and all(isinstance(v, str) for v in wanted):
            from .findings import KINDS
            for kind in wanted:
                if kind not in KINDS:
                    raise ConfigError(f"{path}: {table}.no_findings: unknown finding {kind!r}; "
                                      f"known: {', '.join(KINDS)}")
            ids = set(wanted)
        else:
            raise ConfigError(f"{path}: {table}.no_findings must be true or a list of finding ids")
        # App-wide findings (no principal) count once, under [all], at its first principal.
        app_wide = table == "all" and name == data["principals"][0]["name"]
        # A finding is a principal's when it names it (a world-writable path
        # inside its data does).
        for f in data.get("findings", ()):
            if (f["principal"] == name or (app_wide and f["principal"] is None)) and (ids is None or f["id"] in ids):
                out.append(f"{table}.no_findings: {f['principal'] or 'the app'}: {f['id']}: {f['reason']}")
    if "writes_nothing_outside" in body:
        roots = _names(body["writes_nothing_outside"], path, f"{table}.writes_nothing_outside")
        stray = [f for f in p["writable"] if not any(f.rstrip("/") == r.rstrip("/") or
                                                     f.startswith(r.rstrip("/") + "/") for r in roots)]
        if stray:
            more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
            out.append(f"{table}.writes_nothing_outside = {roots}: {name} can write {stray[0]}{more}")
    return out
