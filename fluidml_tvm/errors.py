"""User-facing errors.

A :class:`FluidMLError` is a problem with the user's input (a model, a flag, a target, a network
address). The CLI prints its message on one line and exits with code 2; the Python API lets it
propagate. Anything else that escapes is a bug in fluidml-tvm.
"""

import contextlib
import contextvars
import sys


class FluidMLError(Exception):
    """An error the user can fix; ``str(err)`` is a complete one-line message."""

    exit_code = 2


def names(items, limit: int = 8) -> str:
    """``a, b, c`` or ``a, b, ... (12 more)``: lists in one-line error messages stay short."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---- the caller's words -------------------------------------------------------------------------
# The same check fails for a Python caller and for the command line; its message names what that
# caller typed: the keyword argument (``input_shapes={"x": [1, 128]}``) or the flag
# (``--input-shapes "x:[1,128]"``). The CLI runs its commands inside :func:`cli_api`.
_API = contextvars.ContextVar("fluidml_tvm_api", default="python")
_FLAGS = {"input_shapes": "--input-shapes", "input_values": "--freeze-inputs",
          "inputs": "--inputs", "fill_mode": "--fill-mode", "pass_config": "--pass-config",
          "target": "--target"}


@contextlib.contextmanager
def cli_api():
    """Messages raised inside use the command line's flags."""
    token = _API.set("cli")
    try:
        yield
    finally:
        _API.reset(token)


def is_cli() -> bool:
    return _API.get() == "cli"


def option(name: str) -> str:
    """``--input-shapes`` on the command line, ``input_shapes`` in Python."""
    return _FLAGS[name] if is_cli() else name


def option_item(name: str, key: str) -> str:
    """One entry of an option: ``--input-shapes x`` / ``input_shapes['x']``."""
    return f"{_FLAGS[name]} {key}" if is_cli() else f"{name}[{key!r}]"


def shapes_example(shapes: dict) -> str:
    """``--input-shapes "x:[1,N]"`` / ``input_shapes={"x": [1, N]}`` for ``{"x": [1, "N"]}``."""
    if is_cli():
        return ('--input-shapes "'
                + " ".join(f"{k}:[{','.join(map(str, v))}]" for k, v in shapes.items()) + '"')
    return ("input_shapes={" + ", ".join(f'"{k}": [{", ".join(map(str, v))}]'
                                         for k, v in shapes.items()) + "}")


def values_example(name: str, values: list) -> str:
    """``--freeze-inputs "n:[3,3]"`` / ``input_values={"n": [3, 3]}``."""
    if is_cli():
        return f'--freeze-inputs "{name}:[{",".join(map(str, values))}]"'
    return f'input_values={{"{name}": [{", ".join(map(str, values))}]}}'


def notice(message: str) -> None:
    """Something the user should know that is not an error (an input filled, a dtype cast, a
    dimension inferred): one line on stderr, from the API and the command line alike."""
    print(f"[fluidml-tvm] notice: {message}", file=sys.stderr, flush=True)
