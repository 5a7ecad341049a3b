"""What every exporter of an app folder needs: the plan bootstrap would make,
without a jail.

Discovery and planning only (both pure): nothing is written, no id is
reserved, no root is needed. pspy.toml and the flags are read exactly as
``pspy bootstrap`` reads them (bootstrap.options_for), so an export and a
bootstrap of the same folder agree on every principal's policy.
"""

from __future__ import annotations

import dataclasses
import os

from ..bootstrap import Request, options_for
from ..discover import discover
from ..errors import ConfigError, PspyError
from ..plan import Plan, build_plan


def plan_for_export(app_dir: str, *, uid_base: int | None = None, gid_base: int | None = None, say=print,
                    **overrides) -> Plan:
    """The plan of ``app_dir`` as bootstrap would build it (chroot mode, as
    root); ``overrides`` replace fields of its Options (``jail``,
    ``interpreter``, ``mode``...), for where the exported app will run."""
    app_dir = os.path.abspath(app_dir)
    if not os.path.isdir(app_dir):
        raise ConfigError(f"{app_dir}: app folder not found")
    options = options_for(Request(app_dir=app_dir, uid_base=uid_base, gid_base=gid_base))
    options = dataclasses.replace(options, **overrides)
    manifest = discover(app_dir, exclude=options.exclude)
    for w in manifest.warnings:
        say(f"pspy: warning: {w}")
    if not manifest.providers:
        raise PspyError(f"{app_dir}: no @pspy.service found; nothing to export")
    return build_plan(manifest, options)


def write_file(out: str, rel: str, data: bytes, mode: int, keep_existing: bool = False) -> None:
    """Write ``out/rel`` without following a symlink below ``out``: each
    folder is opened (or made) through the descriptor of the one above, and
    the file is written under a fresh name there, then renamed over. An
    export run as root into a folder others can write must not be turned
    into a write elsewhere. ``keep_existing``: a file already there is kept."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a relative path inside the export: {rel!r}")
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=dfd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                raise ConfigError(f"{os.path.join(out, *parts[:parts.index(part) + 1])}: not a folder of the "
                                  f"export ({e.strerror}); remove it and export again") from None
            os.close(dfd)
            dfd = child
        name = parts[-1]
        if keep_existing:
            try:
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
                return
            except FileNotFoundError:
                pass
        tmp = f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
