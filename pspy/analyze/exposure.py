"""An exposure score per principal, in the spirit of ``systemd-analyze security``.

0 is shut in, 10 is exposed. Each setting that leaves the principal open
adds its weight; the score is the sum, capped at 10. The weights say what a
compromised principal could do with the opening, not how likely it is:

- its uid is 0 (10): nothing stands in its way;
- no seccomp filter (3); a filter with a dangerous syscall or an allowing
  default (2); a filter much wider than the learned one (0.5);
- no uid separation (rootless, 2);
- the host network (2): it can reach every local service and the outside;
- it can write another principal's data (2) or only read it (1);
- it can write app code, a .py file others import (2);
- chroot mode: no PID namespace (1) and Unix bits as the only file barrier (0.5);
- no memory or process limit (0.5 each).

The rating follows the score: below 2 "ok", below 5 "medium", below 7.5
"exposed", else "unsafe". The report lists the three heaviest reasons.
"""

from __future__ import annotations

from .findings import allows_by_default, unfiltered

RATINGS = ((2.0, "ok"), (5.0, "medium"), (7.5, "exposed"))


def rating(score: float) -> str:
    for limit, name in RATINGS:
        if score < limit:
            return name
    return "unsafe"


def score(p: dict, mode: str, is_rootless: bool) -> dict:
    reasons: list[tuple[float, str]] = []
    if p["uid"] == 0:
        reasons.append((10.0, "runs as uid 0"))
    sc = p.get("seccomp") or {}
    if unfiltered(sc):
        reasons.append((3.0, "no seccomp filter" if sc["profile"] == "none" else "seccomp in learning mode"))
    elif sc:
        if sc.get("dangerous") or allows_by_default(sc):
            reasons.append((2.0, "seccomp allows dangerous syscalls"))
        learned = sc.get("learned")
        if learned and len(learned["extra"]) >= max(10, learned["allows"]):
            reasons.append((0.5, f"seccomp allows {len(learned['extra'])} syscalls more than learned"))
    if is_rootless:
        reasons.append((2.0, "no uid separation (rootless)"))
    if p["network"] == "host":
        reasons.append((2.0, "host network"))
    reaches = p.get("reaches", ())
    if any(r["write"] for r in reaches):
        reasons.append((2.0, "writes another principal's data"))
    elif reaches:
        reasons.append((1.0, "reads another principal's data"))
    if any(path.endswith(".py") for path in p["writable"]):
        reasons.append((2.0, "can write app code"))
    if mode == "chroot":
        reasons.append((1.0, "no PID namespace (chroot mode)"))
        reasons.append((0.5, "Unix permissions are the only file barrier (chroot mode)"))
    limits = p.get("limits") or {}
    if "memory" not in limits:
        reasons.append((0.5, "no memory limit"))
    if "processes" not in limits:
        reasons.append((0.5, "no process limit"))
    total = min(10.0, sum(w for w, _ in reasons))
    heaviest = sorted(reasons, key=lambda r: -r[0])[:3]
    return {"score": round(total, 1), "rating": rating(total),
            "reasons": [{"weight": w, "reason": r} for w, r in sorted(reasons, key=lambda r: -r[0])],
            "top": [r for _, r in heaviest]}
