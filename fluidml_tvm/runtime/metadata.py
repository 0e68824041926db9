"""The metadata file written beside every library (``model.so`` -> ``model.json``).

It holds what the runtime needs and TVM's library does not carry: the input and output names,
shapes and dtypes, the target kind, and the index of the external weights file
(:mod:`fluidml_tvm.runtime.weights`). ``format`` is ``"fluidml-tvm"``.
"""

from __future__ import annotations

import json
import os

from ..errors import FluidMLError


def metadata_path(lib_path: str) -> str:
    """The metadata file written beside a library: ``model.so`` -> ``model.json``."""
    return os.path.splitext(os.fspath(lib_path))[0] + ".json"


def read_metadata(lib_path: str) -> dict:
    """The metadata of ``lib_path``; a one-line :class:`FluidMLError` when it is missing, is not
    JSON, or was not written by fluidml-tvm."""
    meta = metadata_path(lib_path)
    if not os.path.exists(meta):
        raise FluidMLError(
            f"no metadata file {meta} beside {lib_path}; was it written by fluidml-tvm compile?"
        )
    try:
        with open(meta, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise FluidMLError(f"cannot read metadata {meta}: {err}") from None
    if data.get("format") != "fluidml-tvm":
        raise FluidMLError(f"{meta} is not a fluidml-tvm metadata file")
    return data
