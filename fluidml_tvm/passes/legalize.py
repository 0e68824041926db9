"""TVM's legalization with one difference: ``relax.take`` is lowered without a warning.

Relax legalizes every ``take`` (each ONNX ``Gather``: embeddings, shape logic) with
``topi.take(..., mode="fast")``, the mode the importer asks for, and TVM's C++ prints "Warning:
Fast mode segfaults when there are out-of-bounds indices" each time, several lines per compile of
any transformer. The kernel is what it should be (ONNX requires in-bound indices), so
:func:`legalize_ops` makes the same ``topi.take`` call with the process's stderr muted for its
duration: the same TensorIR, no noise. Only the ``fluidml`` pipeline uses it (``fluidml=0`` is
TVM's own pipeline, warnings included).
"""

from __future__ import annotations

import contextlib
import os
import sys

import tvm
from tvm import topi


@contextlib.contextmanager
def _stderr_muted():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _take(bb, call):
    with _stderr_muted():
        return bb.call_te(topi.take, call.args[0], call.args[1], call.attrs.axis,
                          mode=call.attrs.mode)


def legalize_ops() -> tvm.transform.Pass:
    """``relax.transform.LegalizeOps`` with the quiet ``take``."""
    return tvm.relax.transform.LegalizeOps(customize_legalize_map={"relax.take": _take})
