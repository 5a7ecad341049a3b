"""The report as text, leading with what matters.

First the findings, most severe first; then the principals by exposure,
weakest first; then each principal: who it is, what it may call and who may
call it, the data it owns and other principals' data it reaches, its rights
in the app's databases (when it has any), and its files collapsed by folder
where a whole folder shares one verdict. Colour only on a terminal (and
never with NO_COLOR set).
"""

from __future__ import annotations

import os
import sys

from ..logs import printable
from .findings import spelled, unfiltered
from .report import right_order

COLOURS = {"critical": "1;31", "high": "31", "medium": "33", "low": "36", "unsafe": "1;31", "exposed": "31",
           "ok": "32", "title": "1", "none": "2"}


class Paint:
    def __init__(self, on: bool):
        self.on = on

    def __call__(self, text: str, key: str) -> str:
        code = COLOURS.get(key)
        return f"\033[{code}m{text}\033[0m" if self.on and code else text


# Bidirectional-text controls reorder what a terminal shows without being "unprintable".
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(text: str) -> str:
    """Text from the jail (file names a principal chose, messages quoting
    them) made safe for a terminal: control, bidi and other unprintable
    characters become escapes, so a name can neither move the cursor nor
    forge a line of the report."""
    text = printable(text)   # control characters, as pspy logs shows them
    if text.isprintable() and not BIDI & set(text):
        return text
    return "".join(c if c.isprintable() and c not in BIDI else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def escaped(value):
    """A report with every string (dict keys too) passed through shown()."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {shown(k) if isinstance(k, str) else k: escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escaped(v) for v in value]
    return value


def colour_wanted(choice: str, stream=None) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def _parent(path: str) -> str | None:
    if path == "./":
        return None
    stripped = path.rstrip("/")
    return stripped.rsplit("/", 1)[0] + "/" if "/" in stripped else "./"


def meaning(v: str) -> str:
    """What a verdict lets one do with the data; x is left to the JSON (a
    folder's x is searching it, which its r or w comes with here)."""
    if "r" in v and "w" in v:
        return "read-write"
    if "w" in v:
        return "write-only"
    if "r" in v:
        return "read-only"
    return "search-only" if "x" in v else "no access"


def collapse(verdicts: dict[str, str]) -> list[tuple[str, str, int | None]]:
    """``(meaning, path, held)``: a folder whose every entry means the same as
    it does stands for all of them, ``held`` counting what it holds at every
    depth; other entries are shown as themselves (``held`` None), a folder
    that is not collapsed followed by its entries, collapsed again where they
    can be."""
    children: dict[str, list[str]] = {}
    for path in verdicts:
        parent = _parent(path)
        if parent is not None:
            children.setdefault(parent, []).append(path)
    means = {path: meaning(v) for path, v in verdicts.items()}
    uniform: dict[str, bool] = {}
    count: dict[str, int] = {}
    for path in reversed(list(verdicts)):   # children before their folder
        kids = children.get(path, [])
        count[path] = 1 + sum(count[k] for k in kids)
        uniform[path] = all(means[k] == means[path] and uniform[k] for k in kids)
    out: list[tuple[str, str, int | None]] = []

    def emit(path: str):
        kids = children.get(path, [])
        if kids and uniform[path]:
            out.append((means[path], path, count[path] - 1))
            return
        out.append((means[path], path, None))
        for kid in kids:
            emit(kid)

    if "./" in verdicts:
        emit("./")
    return out


ORDER = ("read-write", "write-only", "read-only", "search-only", "no access")


def _files(p: dict, paint: Paint) -> list[str]:
    by_meaning: dict[str, list[str]] = {}
    for m, path, held in collapse(p["files"]):
        star = "*" if not path.endswith("/") and "x" in p["files"][path] else ""
        label = path + star if held is None else f"{path} ({held} {'entry' if held == 1 else 'entries'})"
        by_meaning.setdefault(m, []).append(label)
    lines = []
    for m in sorted(by_meaning, key=ORDER.index):
        text = f"    {m + ':':<12} {', '.join(by_meaning[m])}"
        lines.append(paint(text, "none") if m == "no access" else text)
    return lines


def _data(entries: list[dict]) -> list[str]:
    """One line per database: "owner (every table and column)", or its
    grants right by right as pspy.toml spells them."""
    lines = []
    for e in entries:
        if e["is_owner"]:
            lines.append(f"{e['database']} ({e['path']}): owner (every table and column)")
            continue
        by_right: dict[str, list[str]] = {}
        for table, rights in e["tables"].items():
            for right, columns in rights.items():
                by_right.setdefault(right, []).append(spelled(table, columns))
        parts = [f"{right} {', '.join(by_right[right])}" for right in sorted(by_right, key=right_order)]
        if e["schema"]:
            parts.append("schema changes")
        lines.append(f"{e['database']} ({e['path']}, {e['owner']}'s): {'; '.join(parts) or 'nothing'}")
    return lines


def _groups(p: dict) -> str:
    names = p.get("extra_groups") or []
    if len(names) == len(p["groups"]) and names:
        return ", ".join(f"{n} ({g})" for n, g in zip(names, p["groups"]))
    return ", ".join(str(g) for g in p["groups"]) or "none"


def _principal(p: dict, data: dict, paint: Paint, include_seccomp: bool) -> list[str]:
    out = [""]
    head = f"{paint(p['name'], 'title')}: uid {p['uid']}, gid {p['gid']}" if "kind" in p else \
        paint(f"uid {p['uid']}, gid {p['gid']}", "title")   # the paper's form: an identity, no principal
    if data.get("rootless"):
        head += " (yours: rootless)"   # the plan's group names map to no group of their own
    elif "group" in p:
        head += f" ({p['group']})"
    head += f", extra groups: {_groups(p)}"
    if "exposure" in p:
        e = p["exposure"]
        head += f"; exposure {e['score']:.1f} {paint(e['rating'], e['rating'])}"
    out.append(head)
    ids = p.get("ids")
    if ids and ids["user_namespace"]:
        out.append(f"  ids:       uid {ids['inside']['uid']} gid {ids['inside']['gid']} in the app's user namespace, "
                   f"host uid {ids['host']['uid']} gid {ids['host']['gid']}"
                   + ("" if ids["uid_separation"] else " (rootless: no uid separation)"))
    if p.get("serves"):
        out.append(f"  serves:    {', '.join(p['serves'])}")
    if "may_call" in p:
        out.append(f"  may call:  {', '.join(p['may_call']) or 'nothing'}")
    if p.get("kind") == "provider":
        out.append(f"  called by: {', '.join(p.get('called_by') or []) or 'nobody'}")
    if p.get("namespaces"):
        out.append(f"  namespaces: {', '.join(p['namespaces'])}; network: {p['network']}")
    elif "network" in p:
        out.append(f"  network:   {p['network']}")
    if p.get("owns"):
        out.append(f"  owns:      {', '.join(p['owns'])}")
    for r in p.get("reaches", ()):
        how = "read-write" if r["write"] and r["read"] else "write" if r["write"] else "read-only"
        out.append(f"  reaches:   {r['path']} of {r['owner']} ({how})")
    if any(q.get("data") for q in data["principals"]):   # the plan has databases
        out.extend(f"  data:      {line}" for line in _data(p["data"]) or ["none"])
    if p.get("limits"):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(p["limits"].items()))
        out.append(f"  limits:    {shown} (by {p['limits_enforced_by']})")
    elif "limits" in p:
        out.append("  limits:    none")
    if p.get("isolation") == "per_call":
        out.append("  isolation: per_call (a fresh process forked from a ready copy for every call)")
    out.append("  files (a folder with a count stands for all it holds; * executable):")
    out.extend(_files(p, paint))
    if p.get("symlinks"):
        out.append(f"  symlinks (not followed): {', '.join(p['symlinks'])}")
    if "landlock" in p:
        out.append(f"  landlock:  {p['landlock']['summary']}")
    if "seccomp" in p:
        sc = p["seccomp"]
        learned = sc.get("learned")
        summary = f"allows {sc['allows']}" + (f"; the learned profile {learned['path']} allows {learned['allows']}"
                                              if learned else "")
        if unfiltered(sc):
            out.append(f"  seccomp:   {sc['source']}: no filter, every syscall is allowed")
        else:
            out.append(f"  seccomp:   {sc['source']}; default action {sc['default_action']}; {summary}")
        if include_seccomp:
            for note in sc["derived"]:
                out.append(f"    derived: {note}")
            out.append(f"    allows {len(sc['allowed'])}: {', '.join(sc['allowed']) or 'everything'}")
            for warning in sc["warnings"]:
                out.append(f"    WARNING: {warning}")
    return out


def format_text(data: dict, colour: bool = False, include_seccomp: bool = False) -> str:
    data = escaped(data)
    paint = Paint(colour)
    out = []
    if "app" in data:
        out.append(f"pspy analyze: {data['app']} in {data['jail']} ({data['mode']} mode)")
    else:
        out.append(f"pspy analyze: what one identity can do in {data['jail']}")
    found = data.get("findings", ())
    out.append("")
    out.append(f"Findings: {len(found) or 'none'}")
    for f in found:
        who = f" [{f['principal']}]" if f.get("principal") else ""
        out.append(f"  {paint(f['severity'].upper(), f['severity'])}{who}: {f['reason']}  ({f['id']})")
    ranked = sorted((p for p in data["principals"] if "exposure" in p), key=lambda p: -p["exposure"]["score"])
    if ranked:
        out.append("")
        out.append("Exposure (0 shut in, 10 exposed), weakest first:")
        width = max(len(p["name"]) for p in ranked)
        for p in ranked:
            e = p["exposure"]
            rated = paint(f"{e['rating']:<8}", e["rating"])
            out.append(f"  {p['name']:<{width}} {e['score']:>4.1f} {rated} {'; '.join(e['top']) or 'nothing weighs'}")
    if "isolation" in data:
        out.append("")
        if "warning" in data["isolation"]:
            out.append(f"  WARNING: {data['isolation']['warning']}")
        for key, value in data["isolation"].items():
            if key == "warning":
                continue
            if key == "uid_separation":
                value = "yes" if value else "NO (every principal has the same uid)"
            out.append(f"  {key.replace('_', ' ')}: {value}")
    for p in data["principals"]:
        out.extend(_principal(p, data, paint, include_seccomp))
    return "\n".join(out) + "\n"
