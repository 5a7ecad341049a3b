"""pspy: privilege-separate a Python application.

Most apps need only ``pspy.service``::

    import pspy

    @pspy.service(service_provider="Bank", group="BankGroup", perms={"db/bank": 0o700})
    def transfer(sender, recipient, zoobars): ...

Run ``pspy bootstrap APP_DIR`` as root to start every provider in its own
jailed process; without pspy the decorator changes nothing.
"""

from .decorator import serializable, service
from .errors import (CallInterrupted, PermissionDenied, PspyError, RemoteError, RPCError,
                     SerializationError, ServiceTimeout, ServiceUnavailable)

__version__ = "0.1.0"
__all__ = ["service", "serializable", "PspyError", "RPCError", "RemoteError", "SerializationError",
           "ServiceUnavailable", "CallInterrupted", "ServiceTimeout", "PermissionDenied"]
