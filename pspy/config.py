"""``pspy.toml`` in the app's root: settings an app keeps instead of flags.

Command-line flags override it. Unknown keys are errors, so a typo never
silently drops a setting.
"""

from __future__ import annotations

import os
import tomllib

from .errors import ConfigError

KEYS = {
    "jail": str,
    "uid_base": int,
    "gid_base": int,
    "script": str,
    "files": list,
    "front_end": list,
    "env": dict,
    "rpc_timeout": (int, float),
    "max_frame": int,
    "log_max_bytes": int,   # a principal's log file is rotated at this size ...
    "log_keep": int,        # ... and this many rotated files are kept
    "debug": bool,
    "seccomp": dict,
    "perms": dict,
    "group": dict,
    "extra_groups": dict,
    "limits": dict,
    "landlock": dict,  # enabled = false: no Landlock layer; execute.NAME: programs it may run
    "exclude": list,   # globs discovery does not read; see discover.is_excluded
    "tmp": dict,       # shared = true: chroot mode's /tmp writable by every principal
    "databases": dict,  # NAME = {path, owner, grants}: data grants, pspy/data/grants.py
}
# Settings the front end has no decorator for: it is the only principal they
# may name here (a provider declares its own on its @pspy.service).
FRONT_END_ONLY = ("perms", "group", "extra_groups")
FRONT_END = "web"


def load(app_dir: str) -> dict:
    path = os.path.join(app_dir, "pspy.toml")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(KEYS)}")
        expected = KEYS[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            kind = "number" if isinstance(expected, tuple) else expected.__name__
            raise ConfigError(f"{path}: {key} must be a {kind}, got {value!r}")
    for key in ("files", "front_end"):
        if not all(isinstance(v, str) for v in data.get(key, [])):
            raise ConfigError(f"{path}: {key} must be a list of strings")
    for glob in data.get("exclude", []):
        if not isinstance(glob, str) or not glob:
            raise ConfigError(f"{path}: exclude must be a list of non-empty globs, got {glob!r}")
        if "\0" in glob:
            raise ConfigError(f"{path}: exclude glob {glob!r} contains a NUL byte")
        if glob.startswith("/"):
            raise ConfigError(f"{path}: exclude glob {glob!r} is absolute; globs are relative to the app root")
    for principal, names in data.get("env", {}).items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ConfigError(f"{path}: env.{principal} must be a list of variable names, got {names!r}")
    for principal, policy in data.get("seccomp", {}).items():
        if not (isinstance(policy, str) and policy) and not isinstance(policy, dict):
            raise ConfigError(f"{path}: seccomp.{principal} must be a profile name, 'none', a .json file "
                              f"of the app, or a table {{allow, deny, default_action}}; got {policy!r}")
    landlock = data.get("landlock", {})
    for key, value in landlock.items():
        if key == "enabled" and not isinstance(value, bool):
            raise ConfigError(f"{path}: landlock.enabled must be true or false, got {value!r}")
        if key == "execute":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: landlock.execute must be a table of principal = [program paths]")
            for principal, programs in value.items():
                if not isinstance(programs, list) or not all(isinstance(x, str) and x.startswith("/")
                                                             and "\0" not in x for x in programs):
                    raise ConfigError(f"{path}: landlock.execute.{principal} must be a list of absolute "
                                      f"program paths, got {programs!r}")
        if key not in ("enabled", "execute"):
            raise ConfigError(f"{path}: unknown setting landlock.{key}; known: enabled, execute")
    for key, value in data.get("tmp", {}).items():
        if key != "shared":
            raise ConfigError(f"{path}: unknown setting tmp.{key}; known: shared")
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: tmp.shared must be true or false, got {value!r}")
    for key in FRONT_END_ONLY:
        for principal in data.get(key, {}):
            if principal != FRONT_END:
                raise ConfigError(f"{path}: {key}.{principal}: pspy.toml gives {key} to the front end "
                                  f"({FRONT_END!r}) only; declare a provider's on its @pspy.service")
    front_perms = data.get("perms", {}).get(FRONT_END, {})
    if not isinstance(front_perms, dict):
        raise ConfigError(f"{path}: perms.{FRONT_END} must be a table of path = mode, "
                          f"e.g. perms = {{ {FRONT_END} = {{ \"uploads/\" = 0o700 }} }}")
    for rel, mode in front_perms.items():
        if isinstance(mode, int) and not isinstance(mode, bool) and mode > 0o777 and set(str(mode)) <= set("01234567"):
            raise ConfigError(f"{path}: perms.{FRONT_END}.{rel!r} = {mode} is read by TOML as a decimal number; "
                              f"write the mode in octal: 0o{mode}")
    if FRONT_END in data.get("group", {}) and not isinstance(data["group"][FRONT_END], str):
        raise ConfigError(f"{path}: group.{FRONT_END} must be a group name, got {data['group'][FRONT_END]!r}")
    extra = data.get("extra_groups", {}).get(FRONT_END, [])
    if not isinstance(extra, list) or not all(isinstance(g, str) for g in extra):
        raise ConfigError(f"{path}: extra_groups.{FRONT_END} must be a list of group names, got {extra!r}")
    if "rpc_timeout" in data and not 0 < data["rpc_timeout"] <= 86400:
        raise ConfigError(f"{path}: rpc_timeout must be in (0, 86400] seconds")
    if "log_max_bytes" in data and not 4096 <= data["log_max_bytes"] <= 1 << 40:
        raise ConfigError(f"{path}: log_max_bytes must be between 4096 and 1099511627776 bytes")
    if "log_keep" in data and not 0 <= data["log_keep"] <= 100:
        raise ConfigError(f"{path}: log_keep must be between 0 and 100 rotated files")
    if "max_frame" in data and not 1024 <= data["max_frame"] <= 1 << 30:
        raise ConfigError(f"{path}: max_frame must be between 1024 and 1073741824 bytes")
    if "databases" in data:
        from .data import grants
        try:
            data["databases"] = grants.parse(data["databases"])
        except ConfigError as e:
            raise ConfigError(str(e).replace(grants.SOURCE, path)) from None
    return data
