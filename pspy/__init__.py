"""pspy: privilege-separate a Python application.

Most apps need only ``pspy.service``::

    import pspy

    @pspy.service(service_provider="Bank", group="BankGroup", perms={"db/bank": 0o700})
    def transfer(sender, recipient, zoobars): ...

Run ``pspy bootstrap APP_DIR`` as root to start every provider in its own
jailed process; without pspy the decorator changes nothing.
"""

from .errors import (CallInterrupted, PermissionDenied, PspyError, RemoteError, RPCError,
                     SerializationError, ServiceTimeout, ServiceUnavailable)

__version__ = "0.1.0"


def __getattr__(name):
    # The decorator (and with it the runtime and the RPC stack) loads on first
    # use: every principal's start-up imports pspy.seccomp before the app, and
    # must not pay for what the app may never use.
    if name in ("service", "serializable"):
        from . import decorator
        return getattr(decorator, name)
    raise AttributeError(f"module 'pspy' has no attribute {name!r}")
__all__ = ["service", "serializable", "PspyError", "RPCError", "RemoteError", "SerializationError",
           "ServiceUnavailable", "CallInterrupted", "ServiceTimeout", "PermissionDenied"]
