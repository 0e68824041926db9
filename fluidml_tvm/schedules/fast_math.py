"""Vectorizable fp32 ``erf`` and ``exp`` for llvm targets.

TVM 0.27 lowers ``tirx.erf``/``tirx.exp`` on llvm to a scalar libm call per lane, so a vectorized
GELU epilogue or softmax runs lane by lane (a BERT FFN matmul with its GELU epilogue measured ~5x
slower than the same matmul with a bias epilogue; BERT-base's softmax took 4 ms a call). This
registers, for llvm only, the approximations TVM's own ``topi.fast_erf`` (rational, clamped to
[-4, 4], max abs error ~1e-7) and ``topi.fast_exp`` (range reduction to 2^n * exp(f), degree-7
polynomial, relative error ~1e-7) use, as plain arithmetic that LLVM vectorizes. Other dtypes
keep libm.

The schedule pass registers them (an op lowering rule is process-wide in TVM);
``FLUIDML_TVM_EXACT_MATH=1`` in the environment keeps the libm calls.
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


def _const_fn(x):
    """A constant maker matching ``x``'s element type and lanes (vectorized lowering)."""
    dt = _dtype(x)
    lanes = int(dt.split("x")[1]) if "x" in dt else 1

    def c(v, elem=None):
        k = tirx.const(v, elem or dt.split("x")[0])
        return tirx.Broadcast(k, lanes) if lanes > 1 else k

    return c, lanes


def fast_erf_expr(x):
    """The approximation as a PrimExpr of an fp32 PrimExpr ``x`` (scalar or vector)."""
    c, _ = _const_fn(x)

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


_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)


def fast_exp_expr(x):
    """exp(x) = 2^n * exp(f), n = floor(x log2 e + 1/2), f = x - n ln 2, as a PrimExpr."""
    c, lanes = _const_fn(x)
    sfx = f"x{lanes}" if lanes > 1 else ""

    x = tirx.max(tirx.min(x, c(88.0)), c(-88.0))  # 2^(n+127) stays finite
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    f = x - n * c(0.6931471805599453)
    y = c(_EXP_P[0])
    for p in _EXP_P[1:]:
        y = y * f + c(p)
    y = y * f * f + f + c(1.0)
    bits = tirx.shift_left(tirx.Cast("int32" + sfx, n + c(127.0)), c(23, "int32"))
    two_n = tirx.reinterpret("float32" + sfx, bits)
    return two_n * y


def _lower_exp(call):
    x = call.args[0]
    if _elem(x) != "float32":
        return _libm(call, "exp", "expf")
    return fast_exp_expr(x)


def _elem(e) -> str:
    """Element type of a (possibly vector, ``float32x8``) expression."""
    return _dtype(e).split("x")[0]


def _libm(call, f64: str, f32: str):
    x = call.args[0]
    dt = _dtype(x)
    if dt in ("float64", "float32"):
        return tirx.call_pure_extern(dt, f64 if dt == "float64" else f32, x)
    return call  # other dtypes / vectors of them: left to the default lowering


def _dtype(e) -> str:
    return str(e.ty.dtype) if hasattr(e.ty, "dtype") else str(e.ty)


def _lower_erf(call):
    x = call.args[0]
    if _elem(x) != "float32":
        return _libm(call, "erf", "erff")
    return fast_erf_expr(x)


_REGISTERED = False


def register() -> bool:
    """Install the llvm lowerings of ``tirx.erf``/``tirx.exp`` (once); False when disabled."""
    global _REGISTERED
    if os.environ.get("FLUIDML_TVM_EXACT_MATH", "0") not in ("", "0"):
        return False
    if not _REGISTERED:
        tvm.tirx.register_intrin_lowering("tirx.erf", target="llvm", f=_lower_erf, level=99)
        tvm.tirx.register_intrin_lowering("tirx.exp", target="llvm", f=_lower_exp, level=99)
        _REGISTERED = True
    return True
