"""Vectorizable fp32 ``exp``, ``erf``, ``tanh`` and ``sigmoid``, and divisions by a constant as
multiplications, in the kernels FluidML schedules, and nowhere else.

TVM 0.27 lowers ``tirx.erf``/``tirx.exp`` on llvm to a scalar libm call per lane (``tanh`` and
``sigmoid`` go through ``exp``), so a vectorized GELU epilogue, softmax or SiLU/Sigmoid gate runs
lane by lane (a BERT FFN matmul with its GELU epilogue measured ~5x slower than the same matmul
with a bias epilogue; BERT-base's softmax took 4 ms a call; a 24->1 conv_transpose with a Sigmoid
1.66x ONNX Runtime's time, with ReLU 0.40x).
:func:`apply` rewrites the fp32 ``exp``/``erf`` calls of one scheduled PrimFunc into plain
arithmetic that LLVM vectorizes: ``exp`` by range reduction ``2^n * exp(f)`` (Cody-Waite ``ln 2``,
degree-7 polynomial, ``2^n`` as two exponent-field products so the whole fp32 range is covered,
denormals included), ``erf`` and ``tanh`` by the rational approximations of TVM's
``topi.fast_erf``/``fast_tanh``, ``sigmoid`` as ``(1 + tanh(x / 2)) / 2`` with that ``tanh``.
Measured over the fp32 range (tests/schedules/test_fast_math.py): ``exp`` relative error <= 2e-7 for
x >= -87.3 and absolute error <= 2e-45 below, ``erf``, ``tanh`` and ``sigmoid`` absolute error
<= 3e-7. NaN stays NaN, ``exp(+inf) = inf``, ``exp(x > 88.7228) = inf``, ``exp(-inf) = 0``,
``erf``/``tanh(+-inf) = +-1``, ``sigmoid(+inf) = 1``, ``sigmoid(-inf) = 0``, as IEEE and ONNX
Runtime have them.

The schedule stage applies it to every kernel it schedules (and to the candidates it times),
unless ``fluidml.fast_math=0``. Nothing is registered process-wide: a stock TVM compile in the
same process, or a kernel FluidML does not schedule, keeps libm's exact calls. Other dtypes are
left alone.
"""

from __future__ import annotations

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


def _lanes_suffix(lanes: int) -> str:
    """The dtype suffix of a ``lanes``-wide vector (``x16``; none for a scalar)."""
    return f"x{lanes}" if lanes > 1 else ""


def _isnan(x):
    """``x`` is NaN, as a test of its bits (exponent all ones, mantissa not zero). TVM 0.27's
    loop vectorizer does not vectorize ``tirx.isnan``: a loop holding one ran lane by lane, and
    the selects around it became branches (a depthwise kernel's SiLU epilogue 5x its ReLU one),
    and ``x != x`` the simplifier folds to false."""
    c, lanes = _const_fn(x)
    bits = tirx.reinterpret("int32" + _lanes_suffix(lanes), x)
    return tirx.bitwise_and(bits, c(0x7FFFFFFF, "int32")) > c(0x7F800000, "int32")


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
FP32_TINY, FP32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38  # normal fp32 range
EXP_MAX = 88.72283935546875  # the largest x with a finite fp32 exp(x)
EXP_MIN = -104.0  # exp(x) rounds to 0 in fp32 below about -103.97


def _exp2i(n, c, sfx):
    """``2^n`` for an integral fp32 ``n`` in [-126, 127], built in the exponent field."""
    bits = tirx.shift_left(tirx.Cast("int32" + sfx, n + c(127.0)), c(23, "int32"))
    return tirx.reinterpret("float32" + sfx, bits)


def fast_exp_expr(x0):
    """exp(x) = 2^n * exp(f), n = floor(x log2 e + 1/2), f = x - n ln 2, as a PrimExpr."""
    c, lanes = _const_fn(x0)
    sfx = _lanes_suffix(lanes)
    x = tirx.max(tirx.min(x0, c(EXP_MAX)), c(EXP_MIN))
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    f = x - n * c(0.693359375) + n * c(2.12194440e-4)  # ln 2 = 0.693359375 - 2.12194440e-4
    y = c(_EXP_P[0])
    for p in _EXP_P[1:]:
        y = y * f + c(p)
    y = y * f * f + f + c(1.0)
    half = tirx.floor(n * c(0.5))  # 2^n as 2^half * 2^(n - half): each factor stays normal
    y = y * _exp2i(half, c, sfx) * _exp2i(n - half, c, sfx)
    y = tirx.Select(x0 > c(EXP_MAX), c(float("inf")), y)
    return tirx.Select(_isnan(x0), x0, y)


def fast_erf_ieee_expr(x):
    """:func:`fast_erf_expr` with NaN kept (its clamp would turn NaN into +-1)."""
    return tirx.Select(_isnan(x), x, fast_erf_expr(x))


# tanh(x) = x P(x^2) / Q(x^2) on [-7.905, 7.905] (beyond, +-1 in fp32): the rational fit of Eigen
# and TVM's topi.fast_tanh.
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03)
TANH_CLAMP = 7.90531110763549805


def fast_tanh_expr(x0):
    """tanh as a rational function of an fp32 PrimExpr; NaN kept."""
    c, _ = _const_fn(x0)
    x = tirx.max(tirx.min(x0, c(TANH_CLAMP)), c(-TANH_CLAMP))
    x2 = x * x
    p = c(_TANH_P[0])
    for a in _TANH_P[1:]:
        p = p * x2 + c(a)
    q = c(_TANH_Q[0])
    for b in _TANH_Q[1:]:
        q = q * x2 + c(b)
    y = tirx.Select(x0 >= c(TANH_CLAMP), c(1.0), x * p / q)  # fp32 tanh rounds to +-1 there
    y = tirx.Select(x0 <= c(-TANH_CLAMP), c(-1.0), y)
    return tirx.Select(_isnan(x0), x0, y)


def fast_sigmoid_expr(x):
    """sigmoid(x) = (1 + tanh(x / 2)) / 2 with :func:`fast_tanh_expr`: one rational function
    and one division (the ``1 / (1 + exp(-x))`` form costs the exp's range reduction, its
    polynomial and the ``2^n`` product besides: ~30 vector operations against ~18), absolute
    error <= 3e-7 like the others; 1 for large x, 0 for very negative x, NaN kept."""
    c, _ = _const_fn(x)
    return c(0.5) + c(0.5) * fast_tanh_expr(x * c(0.5))


_EXP = tvm.ir.Op.get("tirx.exp")
_ERF = tvm.ir.Op.get("tirx.erf")
_TANH = tvm.ir.Op.get("tirx.tanh")
_SIGMOID = tvm.ir.Op.get("tirx.sigmoid")


def apply(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its fp32 ``exp``/``erf``/``tanh``/``sigmoid`` calls replaced by the
    approximations."""
    import tvm_ffi

    def rewrite(call):
        if str(call.ty) == "float32" and len(call.args) == 1:
            for op, fast in ((_EXP, fast_exp_expr), (_ERF, fast_erf_ieee_expr),
                             (_TANH, fast_tanh_expr), (_SIGMOID, fast_sigmoid_expr)):
                if call.op.same_as(op):
                    return fast(call.args[0])
        return call

    return tvm_ffi.structural_map(func, [(tvm.ir.Call, rewrite), (tirx.Div, _reciprocal)])


def _reciprocal(div):
    """``x / c`` for an fp32 constant ``c`` as ``x * (1 / c)``: a vector division costs ~5x a
    multiplication on the x86 cores here, and a HardSwish/HardSigmoid epilogue (``... / 6``)
    divides every output (MobileNetV3's stem: 16 channels x 112 x 112). Exact where ``1 / c``
    is (a power of two); else within 1.5 ulp of the division (LLVM's ``arcp``)."""
    b = div.b
    if isinstance(b, tirx.FloatImm) and str(b.ty) == "float32" and b.value != 0.0:
        r = 1.0 / b.value
        if FP32_TINY <= abs(r) <= FP32_MAX:  # a normal fp32 number (a subnormal one drops bits)
            return div.a * tirx.const(r, "float32")
    return div


def _dtype(e) -> str:
    return str(e.ty.dtype) if hasattr(e.ty, "dtype") else str(e.ty)
