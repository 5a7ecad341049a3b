"""Find ``@pspy.service`` declarations by reading an app's source.

Pure: the app's files are parsed with ``ast``, never imported, so discovery
runs no user code (it runs as root). Decorator arguments must therefore be
literals; anything else is reported with its file:line.
"""

from __future__ import annotations

import ast
import os
import posixpath
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Sequence

from .errors import DiscoveryError

# Keyword arguments of the paper's decorator, plus pspy's ``callers``.
KNOWN_KEYWORDS = ("service_provider", "group", "perms", "extra_groups", "callers", "timeout", "network",
                  "seccomp", "limits", "isolation")
# Designed arguments whose enforcement is not built yet. Accepting them
# silently would promise isolation pspy does not give, so they are refused.
NOT_YET_SUPPORTED: tuple[str, ...] = ()

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
FRONT_END_NAME = "web"
# Folders that are never part of the app's own source.
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".pspy",
             "node_modules", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class ServiceSpec:
    name: str            # top-level function or class name
    kind: str            # "function", "async_function" or "class"
    module: str          # import name, e.g. "bank" or "pkg.bank"
    file: str            # path relative to the app root
    line: int
    provider: str
    callers: tuple[str, ...] | None   # None: every principal of the app
    methods: tuple[str, ...] = ()     # public methods of a class service
    timeout: float | None = None      # seconds; None: the app's rpc_timeout

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class PermSpec:
    pattern: str         # normalised, relative to the app root
    mode: int
    location: str


@dataclass
class ProviderSpec:
    name: str
    group: str | None = None
    group_location: str | None = None
    perms: dict[str, PermSpec] = field(default_factory=dict)
    extra_groups: list[str] = field(default_factory=list)
    services: list[ServiceSpec] = field(default_factory=list)
    network: bool | None = None          # None: not said (providers default to no network)
    network_location: str | None = None
    seccomp: str | dict | None = None    # None: not said (providers get 'default')
    seccomp_location: str | None = None
    limits: dict | None = None           # None: not said (no limits); see pspy/limits.py
    limits_location: str | None = None
    isolation: str | None = None         # None: not said ("process": one process serves every call)
    isolation_location: str | None = None


@dataclass
class Manifest:
    app_root: str
    providers: dict[str, ProviderSpec]
    warnings: list[str] = field(default_factory=list)   # files skipped, one line each, for the CLI to show

    def service(self, provider: str, name: str) -> ServiceSpec:
        for spec in self.providers[provider].services:
            if spec.name == name:
                return spec
        raise KeyError(f"{provider}.{name}")


def _set_once(prov: ProviderSpec, attr: str, value, loc: str, problems: list, why: str) -> None:
    """A provider-wide argument: the first service that gives it sets it (and
    where); another service giving a different value is an error naming both."""
    if value is None:
        return
    current = getattr(prov, attr)
    if current is None:
        setattr(prov, attr, value)
        setattr(prov, f"{attr}_location", loc)
    elif current != value:
        problems.append((loc, f"provider {prov.name!r} is given {attr}={value!r} here but "
                              f"{attr}={current!r} at {getattr(prov, f'{attr}_location')}; {why}"))


def discover(app_root: str, exclude: Sequence[str] = ()) -> Manifest:
    """Parse every ``.py`` file under ``app_root`` and merge the services found.

    ``exclude``: globs of files and folders not to read (see ``is_excluded``).
    A file Python cannot parse is skipped with a warning in
    ``Manifest.warnings`` if its bytes do not mention ``pspy`` (a Python 2
    leftover, a template, data named ``.py``); one that does stays an error,
    since it most likely holds a service the user means to declare.
    """
    app_root = os.path.abspath(app_root)
    if not os.path.isdir(app_root):
        raise DiscoveryError([(app_root, "not a directory")])
    problems: list[tuple[str, str]] = []
    root_causes: list[tuple[str, str]] = []   # files not read or not parsed: said first
    warnings: list[str] = []
    found: list[tuple[ServiceSpec, dict, str]] = []
    for rel in python_files(app_root, exclude):
        path = os.path.join(app_root, rel)
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            root_causes.append((rel, f"cannot read: {e}"))
            continue
        try:
            tree = ast.parse(source, filename=rel)
        except (SyntaxError, ValueError) as e:
            # Skipping is safe: a file the interpreter cannot parse cannot be
            # imported either, so it declares no service that could run.
            loc = f"{rel}:{_error_line(e, source)}"
            reason = e.msg if isinstance(e, SyntaxError) else str(e)
            if b"pspy" in source:
                root_causes.append((loc, f"cannot parse: {reason} (if the file is not part of the app, "
                                         "list it in pspy.toml's exclude)"))
            else:
                warnings.append(f"{loc}: skipped: not Python 3 source ({reason}) and it does not mention pspy")
            continue
        found.extend(_services_in_module(tree, rel, problems))
    providers = _merge(found, problems)
    if problems or root_causes:
        # A module that cannot be parsed declares none of its services, so
        # others naming its providers (callers=, ...) fail too: the cause
        # comes first, its consequences after.
        raise DiscoveryError(sorted(set(root_causes), key=_location_key)
                             + sorted(set(problems), key=_location_key))
    return Manifest(app_root=app_root, providers=providers, warnings=warnings)


def _error_line(e: Exception, source: bytes) -> int:
    """The line a parse error points at; for a NUL byte (a ValueError on
    some Python versions, without a line), the line holding the first one."""
    if isinstance(e, SyntaxError) and e.lineno and b"\0" not in source:
        return e.lineno
    if b"\0" in source:
        return source.count(b"\n", 0, source.index(b"\0")) + 1
    return 0


def _location_key(problem: tuple[str, str]) -> tuple:
    loc = problem[0]
    file, _, line = loc.rpartition(":")
    return (file, int(line)) if line.isdigit() else (loc, 0)


def python_files(app_root: str, exclude: Sequence[str] = ()) -> list[str]:
    """The app's ``.py`` files, minus those ``is_excluded`` skips (an excluded
    folder is not walked at all)."""
    patterns = [_normalize_glob(p) for p in exclude]
    out = []
    for dirpath, dirnames, filenames in os.walk(app_root):  # os.walk does not follow symlinks
        here = os.path.relpath(dirpath, app_root)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and not d.startswith(".")
                             and not os.path.islink(os.path.join(dirpath, d))
                             and not _folder_excluded(_join(here, d), patterns))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name.endswith(".py") and not os.path.islink(full) \
                    and not _file_excluded(_join(here, name), patterns):
                out.append(os.path.relpath(full, app_root))
    return out


def _join(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder.replace(os.sep, '/')}/{name}"


def is_excluded(rel_path: str, exclude: Sequence[str]) -> bool:
    """Whether discovery skips the file ``rel_path`` (relative to the app root).

    Each glob of pspy.toml's ``exclude`` is matched with ``fnmatchcase``
    (``*``, ``?``, ``[...]``; case-sensitive) against the file's path relative
    to the app root with '/' separators, and against each folder above it
    (``a``, ``a/b`` for ``a/b/c.py``). A glob is anchored at the app root and,
    as in fnmatch, its ``*`` also matches '/':

    - ``legacy`` or ``legacy/`` skips the folder ``legacy`` and all below it;
      ``legacy/*.py`` every ``.py`` at any depth under it.
    - A trailing '/' means a folder only: ``old.py/`` never skips a file.
    - ``*.tmpl.py`` skips such files at any depth (``*`` crosses '/');
      ``*/vendor/`` every folder named ``vendor`` below the top level.
    - A leading ``./`` is ignored.

    Excluded files are still copied into the jail; only discovery skips them.
    """
    patterns = [_normalize_glob(p) for p in exclude]
    parts = rel_path.replace(os.sep, "/").split("/")
    return _file_excluded("/".join(parts), patterns) or any(
        _folder_excluded("/".join(parts[:i]), patterns) for i in range(1, len(parts)))


def _normalize_glob(pattern: str) -> tuple[str, bool]:
    """(glob without './' or a trailing '/', whether it names folders only)."""
    folder_only = pattern.endswith("/")
    return posixpath.normpath(pattern.rstrip("/") or "/"), folder_only


def _folder_excluded(rel_folder: str, patterns: list[tuple[str, bool]]) -> bool:
    return any(fnmatchcase(rel_folder, glob) for glob, _ in patterns)


def _file_excluded(rel_file: str, patterns: list[tuple[str, bool]]) -> bool:
    return any(fnmatchcase(rel_file, glob) for glob, folder_only in patterns if not folder_only)


def module_name(rel_path: str) -> str:
    """``pkg/bank.py`` -> ``pkg.bank``; ``pkg/__init__.py`` -> ``pkg``."""
    parts = rel_path[:-3].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _Aliases:
    """How this module can spell the decorator: ``pspy.service``, ``p.service``, ``service``."""

    def __init__(self, tree: ast.Module):
        self.modules: set[str] = set()      # names bound to the pspy module
        self.functions: set[str] = set()    # names bound to pspy.service
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "pspy":
                        self.modules.add(alias.asname or "pspy")
            elif isinstance(node, ast.ImportFrom) and node.module == "pspy" and node.level == 0:
                for alias in node.names:
                    if alias.name == "service":
                        self.functions.add(alias.asname or "service")

    def is_service(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Name):
            return func.id in self.functions
        return (isinstance(func, ast.Attribute) and func.attr == "service"
                and isinstance(func.value, ast.Name) and func.value.id in self.modules)


def _services_in_module(tree: ast.Module, rel: str, problems) -> list[tuple[ServiceSpec, dict, str]]:
    aliases = _Aliases(tree)
    if not aliases.modules and not aliases.functions:
        return []
    out = []
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            if not aliases.is_service(target):
                continue
            loc = f"{rel}:{deco.lineno}"
            if not isinstance(deco, ast.Call):
                problems.append((loc, "@service needs arguments: @pspy.service(service_provider=\"Name\", ...)"))
                continue
            if id(node) not in top_level:
                problems.append((loc, f"'{node.name}' is not defined at module top level; "
                                      "only top-level functions and classes can be services"))
                continue
            args = _literal_kwargs(deco, loc, problems)
            if args is None:
                continue
            spec = _service_spec(node, rel, loc, args, problems)
            if spec is not None:
                out.append((spec, args, loc))
    return out


def _literal_kwargs(call: ast.Call, loc: str, problems) -> dict | None:
    ok = True
    if call.args:
        problems.append((loc, "@service takes keyword arguments only "
                              "(service_provider=..., group=..., perms=..., ...)"))
        ok = False
    args = {}
    for kw in call.keywords:
        if kw.arg is None:
            problems.append((loc, "@service does not accept **kwargs: arguments must be literals "
                                  "pspy can read without running the app"))
            ok = False
            continue
        if kw.arg in NOT_YET_SUPPORTED:
            problems.append((loc, f"'{kw.arg}=' is not supported by this version of pspy; "
                                  "remove it rather than rely on isolation that is not enforced"))
            ok = False
            continue
        if kw.arg not in KNOWN_KEYWORDS:
            problems.append((loc, f"unknown argument '{kw.arg}'; known: {', '.join(KNOWN_KEYWORDS)}"))
            ok = False
            continue
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            problems.append((f"{loc.rsplit(':', 1)[0]}:{kw.value.lineno}",
                             f"argument '{kw.arg}' must be a literal (pspy reads it from the "
                             f"source without running it), got: {ast.unparse(kw.value)}"))
            ok = False
    return args if ok else None


def _service_spec(node, rel: str, loc: str, args: dict, problems) -> ServiceSpec | None:
    before = len(problems)
    provider = args.get("service_provider")
    if provider is None:
        problems.append((loc, "missing required argument 'service_provider'"))
    elif not isinstance(provider, str) or not NAME_RE.match(provider):
        problems.append((loc, f"service_provider must be a name of letters, digits, '_', '-' or '.' "
                              f"starting with a letter, got {provider!r}"))
    elif provider == FRONT_END_NAME:
        problems.append((loc, f"service_provider {provider!r} is reserved for the front end"))
    group = args.get("group")
    if group is not None and (not isinstance(group, str) or not NAME_RE.match(group)):
        problems.append((loc, f"group must be a name like 'BankGroup', got {group!r}"))
    elif group == FRONT_END_NAME or FRONT_END_NAME in (args.get("extra_groups") or ()):
        problems.append((loc, f"group {FRONT_END_NAME!r} is the front end's own group; a provider "
                              "may not share it"))
    for key in ("extra_groups", "callers"):
        value = args.get(key)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and NAME_RE.match(v)
                                                           for v in value):
            problems.append((loc, f"{key} must be a list of names, got {value!r}"))
    network = args.get("network")
    if network is not None and not isinstance(network, bool):
        problems.append((loc, f"network must be True or False, got {network!r}"))
    policy = args.get("seccomp")
    if policy is not None and not (isinstance(policy, str) and policy) and not isinstance(policy, dict):
        problems.append((loc, f"seccomp must be a profile name ('default', 'web', 'strict'), 'none', a .json "
                              f"file of the app, or a dict {{allow, deny, default_action}}; got {policy!r}"))
    if args.get("limits") is not None:
        from .limits import normalize
        normalized, limit_problems = normalize(args["limits"], "limits")
        problems.extend((loc, text) for text in limit_problems)
        args["limits"] = normalized
    isolation = args.get("isolation")
    if isolation is not None:
        from .limits import ISOLATIONS
        if isolation not in ISOLATIONS:
            problems.append((loc, f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, got {isolation!r}"))
    timeout = args.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 86400):
        problems.append((loc, f"timeout must be a number of seconds in (0, 86400], got {timeout!r}"))
    perms = args.get("perms")
    if perms is not None:
        if not isinstance(perms, dict):
            problems.append((loc, f"perms must be a dict of path -> mode, got {perms!r}"))
        else:
            for path, mode in perms.items():
                error = perm_problem(path, mode)
                if error:
                    problems.append((loc, error))
    if len(problems) != before:
        return None
    if isinstance(node, ast.ClassDef):
        kind = "class"
        methods = tuple(sorted(
            item.name for item in node.body
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_")))
    else:
        kind = "async_function" if isinstance(node, ast.AsyncFunctionDef) else "function"
        methods = ()
    callers = args.get("callers")
    return ServiceSpec(name=node.name, kind=kind, module=module_name(rel), file=rel,
                       line=node.decorator_list[0].lineno if node.decorator_list else node.lineno,
                       provider=provider, callers=tuple(callers) if callers is not None else None,
                       methods=methods, timeout=float(timeout) if timeout is not None else None)


def normalize_perm_path(path: str) -> str:
    """Normalise a perms key, keeping a trailing '/' (it means: a directory)."""
    norm = posixpath.normpath(path)
    return norm + "/" if path.endswith("/") and norm not in (".", "/") else norm


def perm_problem(path, mode) -> str | None:
    """Why a perms entry is unsafe or malformed, or None if it is fine."""
    if not isinstance(path, str) or not path:
        return f"perms path must be a non-empty string, got {path!r}"
    if "\0" in path:
        return f"perms path {path!r} contains a NUL byte"
    if path.startswith("/"):
        return f"perms path {path!r} is absolute; paths are relative to the app root"
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        return f"perms path {path!r} leaves the app root"
    if norm == ".":
        return f"perms path {path!r} names the app root itself; name the data folder instead"
    if norm.split("/")[0] == ".pspy":
        return f"perms path {path!r} names pspy's own state folder"
    if isinstance(mode, bool) or not isinstance(mode, int):
        return f"mode for {path!r} must be an octal integer such as 0o700, got {mode!r}"
    if mode < 0 or mode > 0o777:
        return (f"mode {oct(mode) if mode >= 0 else mode} for {path!r} is not a permission mode "
                "in 0o000..0o777 (setuid, setgid and sticky bits are refused)")
    return None


def _merge(found, problems) -> dict[str, ProviderSpec]:
    providers: dict[str, ProviderSpec] = {}
    names: dict[tuple[str, str], str] = {}
    for spec, args, loc in found:
        prov = providers.setdefault(spec.provider, ProviderSpec(name=spec.provider))
        key = (spec.provider, spec.name)
        if key in names:
            problems.append((loc, f"provider {spec.provider!r} already has a service named "
                                  f"{spec.name!r} (at {names[key]}); service names must be "
                                  "unique within a provider"))
            continue
        names[key] = loc
        prov.services.append(spec)
        _set_once(prov, "group", args.get("group"), loc, problems,
                  "services of one provider share one process and one group")
        for path, mode in (args.get("perms") or {}).items():
            norm = normalize_perm_path(path)
            earlier = prov.perms.get(norm) or prov.perms.get(norm.rstrip("/")) or prov.perms.get(norm.rstrip("/") + "/")
            if earlier is not None and earlier.mode != mode:
                problems.append((loc, f"perms for {norm!r} is {oct(mode)} here but {oct(earlier.mode)} "
                                      f"at {earlier.location}"))
            elif earlier is None:
                prov.perms[norm] = PermSpec(pattern=norm, mode=mode, location=loc)
        for g in args.get("extra_groups") or ():
            if g not in prov.extra_groups:
                prov.extra_groups.append(g)
        _set_once(prov, "network", args.get("network"), loc, problems, "one process has one network")
        _set_once(prov, "seccomp", args.get("seccomp"), loc, problems, "one process has one filter")
        _set_once(prov, "limits", args.get("limits"), loc, problems, "one provider has one set of limits")
        _set_once(prov, "isolation", args.get("isolation"), loc, problems,
                  "every call of one provider runs the same way")
    # Two providers must not claim the same path with different owners.
    claimed: dict[str, tuple[str, PermSpec]] = {}
    for prov in providers.values():
        for pattern, perm in prov.perms.items():
            other = claimed.get(pattern.rstrip("/"))
            if other is not None:
                problems.append((perm.location, f"perms path {pattern!r} is also claimed by provider "
                                                f"{other[0]!r} at {other[1].location}; a path has one owner"))
            else:
                claimed[pattern.rstrip("/")] = (prov.name, perm)
    known = set(providers) | {FRONT_END_NAME}
    for prov in providers.values():
        for spec in prov.services:
            for caller in spec.callers or ():
                if caller not in known:
                    problems.append((spec.location, f"callers names {caller!r}, which is neither a "
                                                    f"service provider nor the front end "
                                                    f"({', '.join(sorted(known))})"))
    return providers
