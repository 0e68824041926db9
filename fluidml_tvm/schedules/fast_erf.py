"""A vectorizable fp32 ``erf`` for llvm targets.

TVM 0.27 lowers ``tirx.erf`` on llvm to a scalar libm ``erff`` call per lane, so a vectorized
GELU epilogue runs lane by lane (a BERT FFN matmul with its GELU epilogue measured ~5x slower than
the same matmul with a bias epilogue). This registers, for llvm only, the rational approximation
TVM's own ``topi.fast_erf`` uses (clamped to [-4, 4]; max abs error ~1e-7 in fp32), as plain
arithmetic that LLVM vectorizes. Other dtypes keep libm.

Importing :mod:`fluidml_tvm.schedules` registers it (an op lowering rule is process-wide in
TVM); ``FLUIDML_TVM_EXACT_ERF=1`` in the environment keeps the libm call.
"""

from __future__ import annotations

import os

import tvm
from tvm import tirx

_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
         -7.37332916720468e-03, -1.42647390514189e-02)


def fast_erf_expr(x):
    """The approximation as a PrimExpr of an fp32 PrimExpr ``x``."""
    dt = _dtype(x)

    def c(v):
        return tirx.const(v, dt)

    x = tirx.max(tirx.min(x, c(4.0)), c(-4.0))
    x2 = x * x
    p = x2 * c(_ALPHA[0]) + c(_ALPHA[1])
    for a in _ALPHA[2:]:
        p = x2 * p + c(a)
    p = x * p
    q = x2 * c(_BETA[0]) + c(_BETA[1])
    for b in _BETA[2:]:
        q = x2 * q + c(b)
    return p / q


def _dtype(e) -> str:
    return str(e.ty.dtype) if hasattr(e.ty, "dtype") else str(e.ty)


def _lower_erf(call):
    x = call.args[0]
    dt = _dtype(x)
    if dt != "float32":
        return tirx.call_pure_extern(dt, "erf" if dt == "float64" else "erff", x)
    return fast_erf_expr(x)


_REGISTERED = False


def register() -> bool:
    """Install the llvm lowering of ``tirx.erf`` (once); False when disabled by the env."""
    global _REGISTERED
    if os.environ.get("FLUIDML_TVM_EXACT_ERF", "0") not in ("", "0"):
        return False
    if not _REGISTERED:
        tvm.tirx.register_intrin_lowering("tirx.erf", target="llvm", f=_lower_erf, level=99)
        _REGISTERED = True
    return True
