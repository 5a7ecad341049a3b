"""Findings: each a weakness with a severity, a subject and a one-line reason.

Every function here reads the report's principals (dicts, as JSON shows
them) and returns findings ``{"id", "severity", "principal", "path",
"finding", "reason"}``; ``principal`` and ``path`` are None where the
finding is about the app. The ids are stable: ``--expect`` and CI filters
name them, docs/analyze.md lists them.
"""

from __future__ import annotations

import os
import re
import stat

from ..data.grants import ALL

SEVERITIES = ("critical", "high", "medium", "low")

# id -> (severity, title). The title is the "finding" field.
KINDS = {
    "uid-0": ("critical", "principal runs as root"),
    "world-writable": ("high", "world-writable path in the app"),
    "data-written-by-another": ("high", "another principal can write this data"),
    "shared-write": ("high", "path the front end and a provider can both write"),
    "dangerous-syscall": ("high", "seccomp policy allows a dangerous syscall"),
    "no-seccomp": ("high", "no seccomp filter"),
    "rootless": ("high", "rootless: no uid separation"),
    "schema-granted": ("high", "principal may change a database's schema"),
    "data-read-by-another": ("medium", "another principal can read this data"),
    "secret-column-readable": ("medium", "principal can read a column named like a secret"),
    "write-file-not-folder": ("medium", "file writable in a folder that is not"),
    "wider-than-learned": ("medium", "seccomp policy much wider than the learned profile"),
    "uncallable-service": ("low", "service no principal may call"),
    "callers-wider-than-used": ("low", "service every principal may call, though only one does"),
}


def unfiltered(sc: dict) -> bool:
    """No filter at all, or learning mode (every call allowed and recorded)."""
    return sc.get("profile") in ("none", "learning")


def allows_by_default(sc: dict) -> bool:
    """A filter whose default action lets every unlisted syscall through."""
    return (sc.get("default_action") or "").split(" ")[0] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")


def lets_everything_through(sc: dict) -> bool:
    return unfiltered(sc) or allows_by_default(sc)


def finding(kind: str, reason: str, principal: str | None = None, path: str | None = None) -> dict:
    severity, title = KINDS[kind]
    return {"id": kind, "severity": severity, "principal": principal, "path": path, "finding": title,
            "reason": reason}


def ordered(findings: list[dict]) -> list[dict]:
    """Most severe first; then by principal and path, for a stable report."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f["severity"]), f["id"], f["principal"] or "",
                                           f["path"] or ""))


def uid_zero(principals) -> list[dict]:
    return [finding("uid-0", f"{'this identity' if p['name'].startswith('uid ') else p['name']} is uid 0: "
                             "root in the jail, every file and check is open to it", p["name"])
            for p in principals if p["uid"] == 0]


KIND_NAMES = ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "FIFO"),
              (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def kind_of(mode: int) -> str:
    return next((name for test, name in KIND_NAMES if test(mode)), "entry")


def owner_of(path: str, owned: dict[str, set[str]]) -> str | None:
    bare = path.rstrip("/")
    for name, paths in owned.items():
        if any(bare == p or bare.startswith(p + "/") for p in paths):
            return name
    return None


def world_writable(modes: dict[str, int], owned: dict[str, set[str]] | None = None) -> list[dict]:
    """Paths whose other-write bit is set: any process of the host may change
    them (a folder with the sticky bit still lets anyone add entries). The
    finding is about the principal whose data holds the path, if any."""
    out = []
    for path, mode in modes.items():
        if mode & stat.S_IWOTH:
            out.append(finding("world-writable", f"{path} is a world-writable {kind_of(mode)} (mode "
                                                 f"{stat.S_IMODE(mode):04o}): every principal and every "
                                                 "host user may change it", owner_of(path, owned or {}), path))
    return out


def reached(principals) -> list[dict]:
    """Other principals' data each principal can read or write."""
    out = []
    for p in principals:
        for r in p.get("reaches", ()):
            if r["write"]:
                out.append(finding("data-written-by-another",
                                   f"{p['name']} can write {r['path']}, {r['owner']}'s data", p["name"], r["path"]))
            else:
                out.append(finding("data-read-by-another",
                                   f"{p['name']} can read {r['path']}, {r['owner']}'s data", p["name"], r["path"]))
    return out


def shared_write(principals) -> list[dict]:
    """Paths the front end and a provider can both write: the provider's data
    is then only as safe as the web-facing code."""
    front = [p for p in principals if p["kind"] == "front_end"]
    if not front:
        return []
    web = front[0]
    web_writes = set(web["writable"])
    out = []
    for p in principals:
        if p["kind"] != "provider":
            continue
        both = sorted(set(p["writable"]) & web_writes)
        for path in _outermost(both):
            out.append(finding("shared-write", f"{web['name']} and {p['name']} can both write {path}",
                               p["name"], path))
    return out


def _outermost(paths: list[str]) -> list[str]:
    """Paths not inside another one listed (a folder stands for what it holds)."""
    folders = [p for p in paths if p.endswith("/")]
    return [p for p in paths if not any(p != f and (f == "./" or p.startswith(f)) for f in folders)]


def write_file_not_folder(principal: dict) -> list[dict]:
    """A file the principal may write in a folder it may not: SQLite and other
    journaling databases create their journal next to the file, so every
    write fails ("attempt to write a readonly database")."""
    writable = set(principal["writable"])
    out = []
    for path in principal["writable"]:
        if path.endswith("/"):
            continue
        folder = os.path.dirname(path) + "/" if "/" in path else "./"
        if folder in writable:
            continue
        name = principal["name"]
        fix = (f"give {name} the folder instead (perms {{{folder!r}: 0o700}})" if folder != "./"
               else f"move it into a folder of {name}'s own (perms {{'data/': 0o700}})")
        out.append(finding("write-file-not-folder",
                           f"{name} may write {path} but not its folder {folder}: a journaling database there "
                           f"(SQLite) cannot create its journal and fails every write; {fix}", name, path))
    return out


def seccomp_findings(principal: dict) -> list[dict]:
    sc = principal["seccomp"]
    name = principal["name"]
    if sc["profile"] == "none":
        return [finding("no-seccomp", f"{name} runs without a seccomp filter: every syscall of the kernel is "
                                      "open to it", name)]
    if sc["profile"] == "learning":
        return [finding("no-seccomp", f"{name} is in learning mode: every syscall is allowed (and recorded)",
                        name)]
    out = []
    if allows_by_default(sc):
        out.append(finding("dangerous-syscall", f"{name}'s policy lets every unlisted syscall through "
                                                f"(default action {sc['default_action']})", name))
    for syscall in sc["dangerous"]:
        out.append(finding("dangerous-syscall", f"{name}'s policy ({sc['source']}) allows {syscall}", name))
    return out


def wider_than_learned(principal: dict) -> list[dict]:
    """When pspy learn wrote a profile for the principal and its policy allows
    more than twice what the learned one does (and at least 10 more)."""
    learned = principal["seccomp"].get("learned")
    if not learned:
        return []
    extra = learned["extra"]
    if len(extra) < max(10, learned["allows"]):
        return []
    name = principal["name"]
    return [finding("wider-than-learned",
                    f"{name}'s policy allows {principal['seccomp']['allows']} syscalls; {learned['path']} "
                    f"(learned) needs {learned['allows']}: {len(extra)} more than it was seen to use; run it under "
                    f"the learned profile (pspy.toml: seccomp.{name} = \"{learned['path']}\")", name)]


def callers(principals, recorded: dict | None) -> list[dict]:
    """Services nobody may call, and (from what pspy learn recorded) services
    every other principal may call though only one was seen to."""
    out = []
    everyone = {p["name"] for p in principals}
    for p in principals:
        for s in p.get("services", ()):
            full = f"{p['name']}.{s['name']}"
            if not s["callers"]:
                out.append(finding("uncallable-service", f"{full} has no caller: no principal may call it "
                                                         f"({s['where']})", p["name"]))
                continue
            keys = [k for k in (recorded or {}) if k == full or k.startswith(full + ".")]
            if not keys:
                continue
            seen = {c for k in keys for c in recorded[k]}
            others = everyone - {p["name"]}
            if set(s["callers"]) == others and len(others) > 1 and len(seen) == 1:
                (only,) = seen
                out.append(finding("callers-wider-than-used",
                                   f"{full} may be called by {', '.join(sorted(others))}, but pspy learn saw only "
                                   f"{only} call it; name the caller (callers=[{only!r}] at {s['where']})",
                                   p["name"]))
    return out


# A column is "named like a secret" when its name, cut at every character
# that is not a letter (``_``, digits, spaces), has a part made wholly of
# the words below with at least one SECRET_WORD among them: "pw_hash",
# "reset_token", "secret_key", "apikey", "passwordhash" (SQLite names reach
# the plan lower-cased, so camelCase is gone) and "api_keys" match;
# "keyboard", "monkey", "secretary", "tokenizer" and "user_id" do not, since
# no part is made of these words alone. A salt is not on the list: it is
# public by design, and the hash beside it matches on its own name. "key"
# also catches a key-value table's "key" column: a false alarm there is
# cheaper than a missed "private_key".
SECRET_WORDS = frozenset({"password", "passwd", "passphrase", "pwd", "pw", "token", "secret", "key",
                          "credential"})
SECRET_COMPANIONS = frozenset({"hash", "hashed", "digest", "api", "access", "refresh", "reset", "auth", "session",
                               "private", "signing", "client", "bearer", "csrf", "user", "login", "old", "new",
                               "enc", "encrypted", "otp", "app", "master", "admin"})
# word, or word + "s" -> whether it is a secret word
_VOCABULARY = {w + plural: w in SECRET_WORDS for w in SECRET_WORDS | SECRET_COMPANIONS for plural in ("", "s")}
_LONGEST = max(map(len, _VOCABULARY))


def _made_of_words(part: str) -> bool:
    """``part`` cut wholly into words of the vocabulary, at least one of them
    a secret word. ``cuts[i]`` holds, for each way to cut ``part[:i]``,
    whether a secret word was among its words."""
    cuts: list[set[bool]] = [set() for _ in range(len(part) + 1)]
    cuts[0].add(False)
    for i in range(len(part)):
        if not cuts[i]:
            continue
        for j in range(i + 1, min(i + _LONGEST, len(part)) + 1):
            if part[i:j] in _VOCABULARY:
                cuts[j] |= {seen or _VOCABULARY[part[i:j]] for seen in cuts[i]}
    return bool(part) and True in cuts[-1]


def secret_like(column: str) -> bool:
    """Whether a column is named like a secret (the rule above)."""
    return any(_made_of_words(part) for part in re.split(r"[^a-z]+", column.lower()))


def spelled(table: str, columns: list[str]) -> str:
    """A table and columns as pspy.toml's grants spell them: "user(user_id,
    username)", or "message" for every column."""
    return table if columns == [ALL] else f"{table}({', '.join(columns)})"


def data_grants(principal: dict) -> list[dict]:
    """A principal other than the owner that may change a database's schema,
    or can read a column named like a secret (through a grant of the whole
    table too, resolved to the table's columns in the report). The owner
    holds the file: every right is its own, not a finding."""
    name = principal["name"]
    out = []
    for entry in principal.get("data", ()):
        if entry["is_owner"]:
            continue
        db = f"database {entry['database']} ({entry['path']}, {entry['owner']}'s)"
        if entry["schema"]:
            out.append(finding("schema-granted",
                               f"{name} may change the schema of {db}: it can drop or alter any table and "
                               "create triggers and views, which run when other principals use the tables, so "
                               f"its other grants no longer bound it; remove schema = true at {entry['location']} "
                               f"unless {name} runs the migrations", name, entry["path"]))
        for table, columns in entry["readable"].items():
            secret = [c for c in columns if secret_like(c)]
            others = [c for c in columns if not secret_like(c)]
            fix = (f'select "{spelled(table, others)}" instead' if others
                   else f"drop {table} from its select")
            for column in secret:
                out.append(finding("secret-column-readable",
                                   f"{name} can read {table}.{column} of {db}, a column named like a secret; "
                                   f"if {name} does not need it, {fix} at {entry['location']}",
                                   name, entry["path"]))
    return out


def rootless(is_rootless: bool, uid: int) -> list[dict]:
    if not is_rootless:
        return []
    return [finding("rootless", f"rootless mode: every principal runs as uid {uid}, so Unix permissions do not "
                                "separate them; only mounts and namespaces do. Bootstrap as root for separate "
                                "uids")]


def all_findings(data: dict, modes: dict[str, int], recorded: dict | None,
                 owned: dict[str, set[str]] | None = None) -> list[dict]:
    ps = data["principals"]
    out = uid_zero(ps) + world_writable(modes, owned) + reached(ps) + shared_write(ps)
    for p in ps:
        out += write_file_not_folder(p) + data_grants(p)
        if "seccomp" in p:
            out += seccomp_findings(p) + wider_than_learned(p)
    out += callers(ps, recorded) + rootless(data.get("rootless", False), data.get("uid_base", 0))
    return ordered(out)
