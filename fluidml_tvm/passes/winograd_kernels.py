"""The two transform kernels of a Winograd convolution F(m x m, 3 x 3), and its weight transform.

Winograd's minimal filtering (Lavin & Gray, 2016) computes an ``m x m`` output tile of a 3x3
convolution from an ``a x a`` input tile (``a = m + 2``) with ``a*a`` products per (input,
output) channel pair instead of ``9*m*m``: 2.25x fewer for F(2x2, 3x3), 4x for F(4x4, 3x3). The
products of all channels are ``a*a`` independent matmuls; around them:

* input transform: ``V[e, p, c] = (B^T d B)[e]`` for every tile ``p`` and channel ``c`` (``d``
  the tile's ``a x a`` input window, zero outside the image: the convolution's padding);
* the matmuls ``M[e] = V[e] @ U[e]`` (``U[e, c, k]`` the transformed weight, a constant computed
  here with numpy at compile time, :func:`weight_transform`) - a plain batched matmul with a
  constant right operand, which the matmul rule schedules and packs like any other;
* output transform: ``Y[tile] = A^T M A`` plus bias and activation, written NCHW.

The matrices come from TVM's own Cook-Toom construction (``topi.nn.winograd_util``). The kernels
are written out here already scheduled (TVMScript: tiles parallel, channels vectorized, each
row and column of the transform one vectorized statement of additions with its nonzero
coefficients), so the schedule stage leaves them as they are (``tirx.is_scheduled``), and
FuseOps leaves them alone (opaque).
"""

from __future__ import annotations

import functools

import numpy as np

OPAQUE = 8  # relax's OpPatternKind.kOpaque: FuseOps fuses nothing into or out of the kernel


@functools.cache
def matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(m, r) as float64 numpy arrays: ``A`` (a, m), ``B`` (a, a), ``G`` (a, r)
    with topi's convention (``U = G g G^T``, ``V = B^T d B``, ``Y = A^T M A``)."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(m + r - 2), m, r)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def weight_transform(weight: np.ndarray, m: int) -> np.ndarray:
    """``U[e, c, k]`` (``e = ξ*a + ν``) of an OIHW 3x3 weight, float32 (computed in float64)."""
    _, _, g = matrices(m, weight.shape[-1])
    a = g.shape[0]
    # optimize: contracted one matrix at a time (two tensordots); the single nested loop
    # np.einsum runs by default took 3.9 s for a 512x512 weight (ResNet-18's), this 0.2 s
    u = np.einsum("xh,kchw,yw->xykc", g, weight.astype(np.float64), g, optimize=True)
    return np.ascontiguousarray(
        u.reshape(a * a, weight.shape[0], weight.shape[1]).transpose(0, 2, 1)).astype(np.float32)


def tile_grid(out: tuple[int, int], m: int) -> tuple[int, int]:
    """Tile rows and columns of an ``out`` (``ho, wo``) map cut in ``m x m`` tiles (the last ones
    partial)."""
    return -(-out[0] // m), -(-out[1] // m)


def _lanes(n: int, lanes: int) -> int:
    for v in (lanes, 8, 4, 2):
        if v <= lanes and n % v == 0:
            return v
    return 1


def _combination(coef: np.ndarray, names: list[str]) -> str:
    """``sum coef[i] * names[i]`` as TVMScript, zero terms left out, +-1 without a product."""
    terms = []
    for c, name in zip(coef, names):
        if c == 0:
            continue
        if c == 1:
            terms.append(f"+ {name}")
        elif c == -1:
            terms.append(f"- {name}")
        else:
            terms.append(f"{'+' if c > 0 else '-'} T.float32({abs(float(c))!r}) * {name}")
    if not terms:
        return "T.float32(0)"
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else "T.float32(0) " + text


def _header(name: str, params: list[str], loops: list[str], locals_: list[tuple[str, int]],
            how: str) -> tuple[list[str], str]:
    """The kernel's signature and its outer ``loops``, the ``locals_`` (name, floats) declared
    inside them (per parallel iteration); returns the lines and the indentation of the body."""
    lines = ["@T.prim_func(private=True, s_tir=True)", f"def {name}({', '.join(params)}):",
             f"    T.func_attr({{\"tirx.noalias\": True, \"tirx.is_scheduled\": True, "
             f"\"op_pattern\": {OPAQUE}, \"fluidml.scheduled_as\": \"{how}\"}})",
             "    with T.sblock(\"root\"):"]  # relax passes read the body as a root block
    ind = "        "
    for loop in loops:
        lines.append(f"{ind}{loop}")
        ind += "    "
    for buf, size in locals_:
        lines.append(f"{ind}{buf} = T.decl_buffer(({size},), \"float32\", scope=\"local\")")
    return lines, ind


def _pass(mat: np.ndarray, lines: list, ind: str, loop: str, v: int, lane: str, src, dst) -> None:
    """One side of ``mat^T X mat``: a loop ``loop`` over the other axis, in it one vectorized
    statement per output index ``o``: ``dst(o) = sum_a mat[a, o] * src(a)`` (the window loop
    stays a loop: a sixth of the code to parse and compile; the vectors go through local
    buffers, not lets, which TVM's vectorizer mis-vectorizes in a vectorized loop)."""
    lines.append(f"{ind}{loop}")
    lines.append(f"{ind}    for {lane} in T.vectorized({v}):")
    for o in range(mat.shape[1]):
        lines.append(f"{ind}        {dst(o)} = "
                     f"{_combination(mat[:, o], [src(a) for a in range(mat.shape[0])])}")


def input_transform(n: int, c: int, h: int, w: int, pads: tuple[int, int],
                    out: tuple[int, int], m: int, lanes: int = 16) -> str:
    """TVMScript of ``winograd_input(X[n, c, h, w]) -> V[a*a, n*nH*nW, c]`` for an ``out``
    (``ho, wo``) map cut in tiles of ``m`` (``pads``: the convolution's top and left padding)."""
    _, b, _ = matrices(m)
    a = m + 2
    pt, pl = pads
    ho, wo = out
    nh, nw = tile_grid(out, m)
    p = n * nh * nw
    v = _lanes(c, lanes)
    lines, ind = _header(
        "winograd_input",
        [f"X: T.Buffer(({n}, {c}, {h}, {w}), \"float32\")",
         f"V: T.Buffer(({a * a}, {p}, {c}), \"float32\")"],
        [f"for bt in T.parallel({n * nh}):", f"for tw in range({nw}):",
         f"for c0 in range({c // v}):"],
        [("D", a * a * v), ("R", a * a * v)],
        f"winograd: input transform of F({m}x{m}, 3x3), {a}x{a} tiles in parallel rows, "
        f"{v} channels a vector, written scheduled (passes/winograd_kernels.py)")
    y, x = f"bt % {nh} * {m} + i - {pt}", f"tw * {m} + j - {pl}"
    lines += [f"{ind}for i, j in T.grid({a}, {a}):",
              f"{ind}    for c1 in T.vectorized({v}):",
              f"{ind}        D[(i * {a} + j) * {v} + c1] = T.if_then_else("
              f"0 <= {y} and {y} < {h} and 0 <= {x} and {x} < {w}, "
              f"X[bt // {nh}, c0 * {v} + c1, {y}, {x}], T.float32(0))"]
    # rows: R[o][j] = sum_i B[i, o] D[i][j]; columns: V[o*a + q] = sum_j B[j, q] R[o][j]
    _pass(b, lines, ind, f"for j in range({a}):", v, "c1",
          lambda i: f"D[({i * a} + j) * {v} + c1]", lambda o: f"R[({o * a} + j) * {v} + c1]")
    _pass(b, lines, ind, f"for o in range({a}):", v, "c1",
          lambda j: f"R[(o * {a} + {j}) * {v} + c1]",
          lambda q: f"V[o * {a} + {q}, bt * {nw} + tw, c0 * {v} + c1]")
    return "\n".join(lines) + "\n"


def output_transform(n: int, k: int, out: tuple[int, int], m: int, bias: bool = False,
                     activation: str | None = None, lanes: int = 16) -> str:
    """TVMScript of ``winograd_output(M[a*a, p, k][, bias[k]]) -> Y[n, k, ho, wo]`` (NCHW),
    ``activation``: None or ``"relu"``."""
    if activation not in (None, "relu"):
        raise ValueError(f"activation {activation!r}: relu or None")
    amat, _, _ = matrices(m)
    a = m + 2
    ho, wo = out
    nh, nw = tile_grid(out, m)
    p = n * nh * nw
    v = _lanes(k, lanes)
    params = [f"M: T.Buffer(({a * a}, {p}, {k}), \"float32\")"]
    if bias:
        params.append(f"Bias: T.Buffer(({k},), \"float32\")")
    params.append(f"Y: T.Buffer(({n}, {k}, {ho}, {wo}), \"float32\")")
    lines, ind = _header(
        "winograd_output", params,
        [f"for bt in T.parallel({n * nh}):", f"for tw in range({nw}):",
         f"for k0 in range({k // v}):"],
        [("R", m * a * v), ("Z", m * m * v)],
        f"winograd: output transform of F({m}x{m}, 3x3)"
        + (" + bias" if bias else "") + (f" + {activation}" if activation else "")
        + f", tiles in parallel rows, {v} channels a vector, written scheduled "
        "(passes/winograd_kernels.py)")
    # rows: R[o][j] = sum_i A[i, o] M[i*a + j]; columns: Z[o][q] = sum_j A[j, q] R[o][j]
    _pass(amat, lines, ind, f"for j in range({a}):", v, "k1",
          lambda i: f"M[{i * a} + j, bt * {nw} + tw, k0 * {v} + k1]",
          lambda o: f"R[({o * a} + j) * {v} + k1]")
    _pass(amat, lines, ind, f"for o in range({m}):", v, "k1",
          lambda j: f"R[(o * {a} + {j}) * {v} + k1]", lambda q: f"Z[(o * {m} + {q}) * {v} + k1]")
    val = f"Z[(i * {m} + j) * {v} + k1]"
    if bias:
        val = f"{val} + Bias[k0 * {v} + k1]"
    if activation == "relu":
        val = f"T.max({val}, T.float32(0))"
    y, x = f"bt % {nh} * {m} + i", f"tw * {m} + j"
    conds = ([f"{y} < {ho}"] if ho % m else []) + ([f"{x} < {wo}"] if wo % m else [])
    # the stores, unrolled: no loop per vector. LLVM takes 0.37 s an output kernel so (16
    # scattered vector stores in one block), 0.10 s with the stores as loops, but the loops ran
    # 1.2-1.8x slower in this host's slow phases (128ch 28x28 34 vs 20 us; even in fast ones) and
    # ResNet-18 / SqueezeNet 1.013x (2026-12-07-ab-src-winograd-compile.md): kept unrolled
    lines.append(f"{ind}for i in T.unroll({m}):")
    ind += "    "
    lines.append(f"{ind}for j in T.unroll({m}):")
    body = f"{ind}        "
    if conds:
        lines.append(f"{ind}    if {' and '.join(conds)}:")
        body += "    "
        lines.append(f"{ind}        for k1 in T.vectorized({v}):")
    else:
        lines.append(f"{ind}    for k1 in T.vectorized({v}):")
    lines.append(f"{body}Y[bt // {nh}, k0 * {v} + k1, {y}, {x}] = {val}")
    return "\n".join(lines) + "\n"


def parse(script: str, cache_dir: str | None = None):
    """The PrimFunc of a kernel's TVMScript; with ``cache_dir``, kept there as TVM's JSON of the
    PrimFunc under the script's hash (and TVM's version), read back instead of parsed when
    present: TVM's TVMScript parser took ~70 ms a kernel (GoogLeNet's 33: 2.3 s of each
    compile), its JSON loader ~7 ms. A file that does not load is parsed again and replaced."""
    import hashlib
    import os

    import tvm
    from tvm.script import from_source
    from tvm.script import tirx as T

    path = None
    if cache_dir:
        key = hashlib.sha256(f"{tvm.__version__}\n{script}".encode()).hexdigest()[:32]
        path = os.path.join(cache_dir, "kernels", f"winograd-{key}.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    return tvm.ir.load_json(f.read())
            except Exception:  # noqa: BLE001 - a torn or foreign file: parse it again
                pass
    func = from_source(script, extra_vars={"T": T})
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(tvm.ir.save_json(func))
            os.replace(tmp, path)  # atomic: a concurrent compile reads all of it or none
        except OSError:  # a read-only cache: parsing next time too
            pass
    return func
