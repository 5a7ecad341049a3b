"""``pspy analyze``: what each principal is, may call and can touch, with findings.

report.py builds the report as plain data from the plan and the jail;
text.py, dot.py and JSON print it; expect.py checks a file of expectations
against it; live.py verifies it from inside the running principals.
"""

from __future__ import annotations

import json

from .access import Identity
from .dot import format_dot
from .report import SCHEMA, identity_of, report, report_for_ids
from .text import format_text


def format_json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"


__all__ = ["SCHEMA", "Identity", "format_dot", "format_json", "format_text", "identity_of", "report",
           "report_for_ids"]
