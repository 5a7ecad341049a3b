"""A principal without network gets an empty network namespace: loopback only."""

from __future__ import annotations

from pyroute2 import IPRoute

from ..errors import SandboxError


def loopback_up() -> None:
    """Bring lo up in the current (new) network namespace, through pyroute2."""
    try:
        with IPRoute() as ipr:
            (index,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=index, state="up")
    except Exception as e:  # noqa: BLE001 - pyroute2 raises its own types
        raise SandboxError(f"bringing up lo in the principal's network namespace failed: {e}") from None
