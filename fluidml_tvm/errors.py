"""User-facing errors.

A :class:`FluidMLError` is a problem with the user's input (a model, a flag, a target, a network
address). The CLI prints its message on one line and exits with code 2; the Python API lets it
propagate. Anything else that escapes is a bug in fluidml-tvm.
"""


class FluidMLError(Exception):
    """An error the user can fix; ``str(err)`` is a complete one-line message."""

    exit_code = 2


def names(items, limit: int = 8) -> str:
    """``a, b, c`` or ``a, b, ... (12 more)``: lists in one-line error messages stay short."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
