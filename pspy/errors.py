"""Every exception pspy raises on purpose.

Two families: ``PspyError`` for set-up mistakes that the CLI turns into a
one-line message (no traceback), and the RPC errors a caller can catch around
a service call.
"""


class PspyError(Exception):
    """A user-facing error: the CLI prints its message and exits non-zero."""


class DiscoveryError(PspyError):
    """Mistakes in ``@pspy.service`` decorators, found by reading the source.

    ``problems`` is a list of ``(location, message)`` with location
    ``file:line``; all of them are reported at once.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{loc}: {msg}" for loc, msg in self.problems))


class ConfigError(PspyError):
    """A bad option or a bad ``pspy.toml``."""


class PlanError(PspyError):
    """The services cannot be turned into a safe plan (ids, groups, names)."""


class JailError(PspyError):
    """The jail could not be built or refused an unsafe path."""


class SandboxError(PspyError):
    """A principal could not be started in its sandbox."""


# --- errors seen by code calling a service --------------------------------

class RPCError(Exception):
    """Base of the errors a service call can raise on the caller's side."""


class SerializationError(RPCError, TypeError):
    """A value cannot cross the privilege boundary (not on the type allow-list)."""


class ServiceUnavailable(RPCError):
    """The request was never delivered: safe to retry."""


class CallInterrupted(RPCError):
    """The request was delivered but no reply came: the outcome is unknown."""


class ServiceTimeout(RPCError):
    """No reply within the call's timeout: the outcome is unknown."""


class PermissionDenied(RPCError):
    """The provider refused this caller (it is not in the service's ``callers``)."""


class ProtocolError(RPCError):
    """A malformed or oversized frame."""


class RemoteError(RPCError):
    """An exception raised in the provider whose type cannot be rebuilt here."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str | None = None):
        text = f"{remote_type}: {message}"
        if remote_traceback:
            text += "\n--- remote traceback ---\n" + remote_traceback
        super().__init__(text)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
