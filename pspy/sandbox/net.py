"""A principal's network namespace: empty, with only loopback up.

The request is pyroute2's: its ``ifinfmsg`` encodes the RTM_NEWLINK that
sets IFF_UP on lo. It is encoded once, in the supervisor; the launcher
(pspy/_native/spawn.c) sends it over a netlink socket of each new network
namespace and checks the kernel's acknowledgement. (pyroute2's ``IPRoute``
object would do the same, but building one costs about 2.5 ms per start,
and no Python runs between clone and exec.)
"""

from __future__ import annotations

import functools

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

LOOPBACK_INDEX = 1   # lo is always interface 1 of a new network namespace


@functools.cache
def loopback_request() -> bytes:
    """The netlink message that brings lo up in the namespace it is sent in."""
    msg = ifinfmsg()
    msg["index"] = LOOPBACK_INDEX
    msg["flags"] = IFF_UP
    msg["change"] = IFF_UP
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = 1
    msg.encode()
    return bytes(msg.data)


def warm_up() -> None:
    """Encode the request before the first start (pyroute2 builds its tables lazily)."""
    loopback_request()
