"""The report as a Graphviz graph: principals, the data they own, who reaches
whose data, and who may call whom.

Principals are boxes (the front end doubled), data paths are folders (or
notes, for files); a solid edge from a principal to a path is "owns", a
dashed one "reaches" (labelled read or read-write, red when written); a
bold edge between principals is "may call", labelled with the services.
Render with ``dot -Tsvg``.
"""

from __future__ import annotations


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_dot(data: dict) -> str:
    from .text import escaped
    data = escaped(data)   # names a principal chose reach the labels only escaped
    out = [f"digraph {_q('pspy ' + data.get('app', 'analyze'))} {{",
           "  rankdir=LR;",
           '  node [fontname="Helvetica", fontsize=11];',
           '  edge [fontname="Helvetica", fontsize=9];']
    data_nodes: dict[str, str] = {}

    def data_node(path: str) -> str:
        if path not in data_nodes:
            node = f"data:{path}"
            shape = "folder" if path.endswith("/") else "note"
            out.append(f"  {_q(node)} [shape={shape}, label={_q(path)}];")
            data_nodes[path] = node
        return data_nodes[path]

    for p in data["principals"]:
        label = f"{p['name']}\nuid {p['uid']}"
        if "exposure" in p:
            label += f"\nexposure {p['exposure']['score']:.1f}"
        shape = "doubleoctagon" if p.get("kind") == "front_end" else "box"
        out.append(f"  {_q('principal:' + p['name'])} [shape={shape}, label={_q(label)}];")
    for p in data["principals"]:
        me = _q("principal:" + p["name"])
        for path in p.get("owns", ()):
            out.append(f"  {me} -> {_q(data_node(path))} [label=owns];")
        for r in p.get("reaches", ()):
            how = "read-write" if r["write"] and r["read"] else "write" if r["write"] else "read"
            colour = "red" if r["write"] else "gray40"
            out.append(f"  {me} -> {_q(data_node(r['path']))} [style=dashed, color={colour}, label={_q(how)}];")
        calls: dict[str, list[str]] = {}
        for name in p.get("may_call", ()):
            provider, _, service = name.partition(".")
            calls.setdefault(provider, []).append(service)
        for provider, services in sorted(calls.items()):
            out.append(f"  {me} -> {_q('principal:' + provider)} [style=bold, color=blue, "
                       f"label={_q(', '.join(services))}];")
    out.append("}")
    return "\n".join(out) + "\n"
