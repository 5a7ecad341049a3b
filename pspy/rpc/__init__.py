"""RPC between principals: codec (what may cross), protocol (framing),
server (provider side, caller authorisation), client (stubs' transport)."""

from .client import Client
from .server import Endpoint, Server

__all__ = ["Client", "Endpoint", "Server"]
