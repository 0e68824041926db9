"""A loaded model's inputs, checked the same way for ``Model.run``/``time`` and ``fluidml-tvm run``.

- **Missing input**: made in ``fill_mode`` (``random``, ``zeros``, ``ones``: tvmc's modes), with
  a notice on stderr naming it (tvmc filled them without a word).
- **Unknown name, wrong shape, too many positional inputs**: a one-line :class:`FluidMLError`.
- **Other dtype**: a cast within a kind (``float64`` -> ``float32``, ``int32`` -> ``int64``) is
  done with a notice; a cast across kinds (a float array for an ``int64`` input, ints for a
  ``bool`` one) or one that changes an integer value is an error.

Messages name what the caller typed (:func:`fluidml_tvm.errors.option`): the ``inputs`` dict and
``fill_mode`` in Python, ``--inputs`` and ``--fill-mode`` on the command line.
"""

from __future__ import annotations

import numpy as np

from ..errors import FluidMLError, is_cli, names, notice, option

FILL_MODES = ("random", "zeros", "ones")
_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool", "c": "complex"}


def fill(specs: list, fill_mode: str = "random", seed: int = 0) -> dict:
    """Inputs of the right shapes and dtypes for ``specs`` (``{"name", "shape", "dtype"}``)."""
    if fill_mode not in FILL_MODES:
        raise FluidMLError(f"{option('fill_mode')} must be random, zeros or ones, "
                           f"got {fill_mode!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if fill_mode == "zeros":
            out[spec["name"]] = np.zeros(shape, dtype)
        elif fill_mode == "ones":
            out[spec["name"]] = np.ones(shape, dtype)
        elif dtype.kind in "iub":
            out[spec["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            out[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return out


def _where() -> str:
    return "--inputs" if is_cli() else "the inputs"


def complete(specs: list, inputs=None, fill_mode: str = "random", say=notice) -> dict:
    """``{name: array}`` for every input of ``specs``, in their order, checked and completed as
    the module docstring says. ``inputs``: a dict, a list in input order, or None (all filled).
    ``say`` receives the notices."""
    wanted = [s["name"] for s in specs]
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        inputs = list(inputs)
        if len(inputs) > len(wanted):
            raise FluidMLError(f"{len(inputs)} inputs given, the model takes {len(wanted)}: "
                               f"{names(wanted)}")
        inputs = dict(zip(wanted, inputs))
    unknown = [n for n in inputs if n not in wanted]
    if unknown:
        raise FluidMLError(f"{_where()} name(s) {names(unknown)}, which the model does not "
                           f"take; its inputs are {names(wanted)}")
    missing = [s for s in specs if s["name"] not in inputs]
    out = dict(inputs)
    if missing:
        out.update(fill(missing, fill_mode))
        fill_how = f"--fill-mode {fill_mode}" if is_cli() else f"fill_mode={fill_mode!r}"
        which = f"input(s) {names(s['name'] for s in missing)}"
        none = f"no {option('inputs')} given: {which}"
        say((none if not inputs else f"{which} not in {_where()}")
            + f": filled with {fill_mode} values ({fill_how})")
    return {s["name"]: np.asarray(_checked(s, out[s["name"]], say), order="C") for s in specs}


def _checked(spec: dict, value, say) -> np.ndarray:
    name, want = spec["name"], np.dtype(spec["dtype"])
    a = np.asarray(value)
    if tuple(a.shape) != tuple(spec["shape"]):
        raise FluidMLError(f"input {name} has shape {list(a.shape)}, the model was compiled for "
                           f"{list(spec['shape'])}")
    if a.dtype == want:
        return a
    same_kind = a.dtype.kind == want.kind or (a.dtype.kind in "iu" and want.kind in "iu")
    if not same_kind or not np.can_cast(a.dtype, want, "same_kind"):
        raise FluidMLError(f"input {name} is {a.dtype}, the model takes {want}: convert it "
                           f"first (e.g. .astype('{want}')); {_KINDS.get(a.dtype.kind, 'other')} "
                           f"values are not cast to {_KINDS.get(want.kind, 'other')} implicitly")
    cast = a.astype(want)
    if want.kind in "iu" and not np.array_equal(cast.astype(a.dtype), a):
        raise FluidMLError(f"input {name}: some {a.dtype} values do not fit in {want}, the "
                           "dtype the model takes")
    say(f"input {name} is {a.dtype}, the model takes {want}: cast")
    return cast
