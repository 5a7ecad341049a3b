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
}


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
        if not isinstance(value, KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be a {KEYS[key].__name__}, got {value!r}")
    for key in ("files", "front_end"):
        if not all(isinstance(v, str) for v in data.get(key, [])):
            raise ConfigError(f"{path}: {key} must be a list of strings")
    for principal, names in data.get("env", {}).items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ConfigError(f"{path}: env.{principal} must be a list of variable names, got {names!r}")
    return data
