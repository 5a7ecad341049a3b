"""A principal without network gets an empty network namespace: loopback only."""

from __future__ import annotations

from pyroute2 import IPRoute

from ..errors import SandboxError


LOOPBACK_INDEX = 1   # lo is always interface 1 of a new network namespace


def loopback_up() -> None:
    """Bring lo up in the current (new) network namespace, through pyroute2."""
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=LOOPBACK_INDEX, state="up")
    except Exception as e:  # noqa: BLE001 - pyroute2 raises its own types
        raise SandboxError(f"bringing up lo in the principal's network namespace failed: {e}") from None


def warm_up() -> None:
    """Load pyroute2's lazily imported parts once, in the supervisor, so that
    each forked launcher does not pay for them (read-only: one lookup)."""
    with IPRoute() as ipr:
        ipr.link_lookup(ifname="lo")
