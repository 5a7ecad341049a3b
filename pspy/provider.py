"""The provider entry point: ``python -m pspy.provider``, run by the supervisor.

A module of its own so that ``pspy.runtime`` is imported once, under its
own name, and the decorators in the app register with that same runtime.
"""

from .runtime import serve_provider

if __name__ == "__main__":
    raise SystemExit(serve_provider())
