"""``pspy export systemd APP_DIR``: (being built, issue 14)."""

from __future__ import annotations

from ..errors import PspyError


def add_parser(sub) -> None:
    p = sub.add_parser("systemd", help="(not built yet)", usage="pspy export systemd APP_DIR")
    p.add_argument("app_dir", metavar="APP_DIR")


def run(args) -> int:
    raise PspyError("pspy export systemd is not built yet")
