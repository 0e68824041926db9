"""Cost of one operator for one tuple of (input layouts, output layout): FluidML's ``T_n``.

A layout is a permutation ``L`` of a tensor's dims: physical dim ``p`` holds logical dim ``L[p]``
(the identity is the default, row-major layout). Every op falls in one of four kinds, which say
which layouts its kernel absorbs (reads/writes through permuted strides at no extra pass) and
which need an explicit transpose around it - exactly what :mod:`.layout_rewrite` emits:

``permute``  ``permute_dims``: free when its input and output are the same bytes (an alias)
             or its input is a constant (folded at compile time), else one transpose kernel.
``matmul``   ``matmul`` of two operands of rank >= 2: absorbs any layout of A, B and C (the
             rewrite emits one kernel indexing them through the permutation); an operand whose
             innermost dim is not the one the kernel streams over costs a strided-read penalty.
``elemwise`` elementwise/broadcast ops: absorb a layout shared by the output and every
             same-shape input; other inputs are transposed to it.
``axis``     ops parametrized by axes (``strided_slice``, ``concat``, ``softmax``,
             ``log_softmax``, ``layer_norm``, ``mean`` keeping dims: a squeeze-excitation's
             global pool): absorb any layout shared by the output and every
             same-rank input, their axes remapped to physical ones (layer_norm only where its
             axes keep their order, so gamma/beta are read as they are); a softmax/layer_norm
             whose reduced axis stops being the innermost pays a strided-read penalty.
``conv``     NCHW conv2d with a constant weight: reads NCHW or NHWC and writes NCHW or NHWC
             (:mod:`.layout_conv`); ``pool``: max/avg pools in NCHW or NHWC (input = output).
``opaque``   everything else: default layouts only; non-default ones are transposed around it.

:class:`AnalyticCost` prices kernels in seconds from bytes moved and FLOPs (a kernel launch,
streaming bandwidth, a lower bandwidth for transposes, a matmul throughput). It is a model, not a
measurement: :mod:`.layout_measure` replaces the permute/matmul/conv terms by timings where asked.
What the later stages remove costs nothing: an elementwise op FuseOps computes in the epilogue of
the kernel before it (:func:`fused_epilogue`), and a concat whose inputs the memory stage writes
into their slabs of its output (:func:`concat_in_place`: NCHW channels, not NHWC's). So the
modelled run is close to what runs, and a plan's modelled share of it means what it says
(SqueezeNet: 15.4 ms modelled for a 3.7 ms run before, 8.8 ms after).
Constants have no layout of their own: they are stored pre-permuted for free. Dynamic shapes,
rank < 2 tensors, graph inputs and outputs keep the default layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import OpGraph
from .layouts import compose, identity, inverse, is_blocked, moves_data, phys_shape

REDUCING_AXIS_OPS = {"relax.nn.softmax", "relax.nn.log_softmax", "relax.nn.layer_norm"}

ELEMWISE = {
    f"relax.{n}"
    for n in (
        "add subtract multiply divide power maximum minimum floor_divide erf tanh exp log sqrt "
        "rsqrt sigmoid negative abs square clip astype where less greater less_equal greater_equal "
        "equal not_equal nn.relu nn.gelu nn.gelu_tanh nn.silu cos sin"
    ).split()
}
FREE_OPS = {"relax.reshape", "alias"}  # views: no kernel at run time


def op_kind(g: OpGraph, i: int) -> str:
    n = g.nodes[i]
    ts = [g.tensors[t] for t in n.inputs]
    out = g.tensors[n.output]
    if out.shape is None or any(t.shape is None for t in ts):
        return "opaque"
    if n.op == "relax.permute_dims" and len(ts) == 1 and "axes" in n.attrs:
        return "permute"
    if n.op == "relax.matmul" and len(ts) == 2 and all(len(t.shape) >= 2 for t in ts):
        return "matmul"
    if n.op in ELEMWISE and len(out.shape) >= 1:
        return "elemwise"
    if "conv" in n.attrs or "pool" in n.attrs:
        from .conv import is_conv, is_pool

        if is_conv(g, i):
            return "conv"
        if is_pool(g, i):
            return "pool"
    if "axis_list" in n.attrs and ts and len(ts[0].shape) == len(out.shape) and all(
            len(t.shape) == len(out.shape) for t in ts[1:]
            if n.op != "relax.nn.layer_norm"):
        return "axis"
    return "opaque"


def pool_ok(lin, lout) -> bool:
    """A pool runs on NCHW, NHWC or NCHW[b]c, its input and output alike."""
    from .layouts import CONV_LAYOUTS

    return tuple(lin) == tuple(lout) and (tuple(lout) in CONV_LAYOUTS or is_blocked(lout))


def axis_ok(g: OpGraph, i: int, lout) -> bool:
    """Whether axis op ``i`` runs as is on tensors in layout ``lout`` (its axes remapped)."""
    n = g.nodes[i]
    if n.op != "relax.nn.layer_norm":
        return True
    pos = inverse(lout)
    phys = [pos[a] for a in n.attrs["axis_list"]]
    return phys == sorted(phys)


def mean_converts(g: OpGraph, i: int, lin, lout) -> bool:
    """Whether mean node ``i``, computed on its input held in ``lin`` (its axes remapped; the
    result held in ``lin`` too), needs its result moved to be held in ``lout``: not for a global
    pool's ``[N, C, 1, 1]``, the same bytes in NCHW and NHWC."""
    out = g.tensors[g.nodes[i].output]
    return lin != lout and moves_data(compose(inverse(lin), lout), phys_shape(out.shape, lin))


def axis_inputs(g: OpGraph, i: int) -> list[int]:
    """Argument positions of axis op ``i`` that share its output's layout (same rank)."""
    n = g.nodes[i]
    if n.op == "relax.nn.layer_norm":
        return [0]
    return list(range(len(n.inputs)))


def strided_reduction(g: OpGraph, i: int, lout) -> bool:
    """A softmax/layer_norm whose reduced axis is innermost by default but not in ``lout``."""
    n = g.nodes[i]
    if n.op not in REDUCING_AXIS_OPS:
        return False
    shape = g.tensors[n.output].shape
    inner = [d for d in range(len(shape)) if shape[d] != 1]
    phys_inner = [d for d in lout if shape[d] != 1]
    last = inner[-1] if inner else None
    return last in n.attrs["axis_list"] and (not phys_inner or phys_inner[-1] != last)


def layoutable(g: OpGraph, name: str) -> bool:
    """Tensors whose layout the stage may choose (intermediates of static rank >= 2)."""
    t = g.tensors[name]
    return (t.kind == "value" and not t.output and t.shape is not None and len(t.shape) >= 2
            and name in g.producer)


@dataclass(frozen=True)
class AnalyticCost:
    """Seconds per kernel from bytes and FLOPs; defaults fit a 2-core AVX-512 server.

    Calibrated on this project's 2-core machine with BERT-base attention shapes (1x12x128x64,
    fp32, FluidML schedules): a transpose kernel moved 393 KB in ~51 us (~15 GB/s counting
    read + write); reading the K operand with its reduction dim innermost cost the QK^T kernel
    ~60-110 us more than the default layout (~1.5 extra passes over that operand).
    """

    launch: float = 2e-6  # one kernel call through the VM
    bandwidth: float = 10e9  # bytes/s, streaming reads + writes
    transpose_bandwidth: float = 15e9  # bytes/s, read + write, of a transpose kernel
    flops: float = 100e9  # matmul FLOP/s
    strided_read: float = 1.5  # extra passes over an operand read against its streaming dim
    # added to every explicit transform a plan would insert (not to a graph's own permute_dims);
    # a huge value makes the planner only use layouts that kernels absorb
    conversion_penalty: float = 0.0
    # the memory stage writes a concat's inputs into their slabs of its output where the axis
    # is outermost (fluidml.memory_concat): such a concat costs nothing (:func:`concat_in_place`)
    inplace_concat: bool = True

    name = "analytic"

    def transpose(self, nbytes: int) -> float:
        return self.launch + 2 * nbytes / self.transpose_bandwidth

    def convert(self, nbytes: int, *lays) -> float:
        """An explicit transform the rewrite would insert around a kernel. To or from
        ``NCHW[b]c`` (any of ``lays`` blocked) it is not penalized: a blocked layout can only be
        entered and left through one (TVM's AlterOpLayout inserts them the same way), so it pays
        with its real cost or not at all."""
        penalty = 0.0 if any(map(is_blocked, lays)) else self.conversion_penalty
        return self.transpose(nbytes) + penalty

    def kernel(self, g: OpGraph, i: int) -> float:
        """The node's own kernel in default layouts (layout-independent part); nothing for an
        elementwise op FuseOps computes in the epilogue of the kernel before it
        (:func:`fused_epilogue`)."""
        n = g.nodes[i]
        if n.op in FREE_OPS or fused_epilogue(g, i):
            return 0.0
        return self.launch + moved_bytes(g, i) / self.bandwidth

    def matmul(self, g: OpGraph, i: int, lays: list, lout) -> float:
        n = g.nodes[i]
        a, b = (g.tensors[t] for t in n.inputs)
        out = g.tensors[n.output]
        k = a.shape[-1]
        cost = self.kernel(g, i) + 2.0 * out.size * k / self.flops
        # streaming dims: A over k (its last dim), B and C over n (their last dims)
        for t, lay in ((a, lays[0]), (b, lays[1]), (out, lout)):
            if t.kind == "const" or lay is None:
                continue  # constants are stored in whatever layout the kernel reads best
            inner = [d for d in lay if t.shape[d] != 1]
            if inner and inner[-1] != len(t.shape) - 1:
                cost += self.strided_read * t.nbytes / self.bandwidth
        return cost

    def conv(self, g: OpGraph, i: int, lin, lout) -> float:
        """A conv kernel reading ``lin`` and writing ``lout`` (NCHW/NHWC), its launch aside (a
        measured model's timing is the whole kernel): the analytic model has no preference
        between the two."""
        from .conv import conv_flops

        return conv_flops(g, i) / self.flops + moved_bytes(g, i) / self.bandwidth

    def node(self, g: OpGraph, i: int, layouts: dict) -> float:
        """``T_n`` for the layouts in ``layouts`` (tensor name -> perm; missing: default)."""
        n = g.nodes[i]
        kind = op_kind(g, i)
        out = g.tensors[n.output]
        lout = layouts.get(n.output) or identity(len(out.shape or ()))
        lin = [layouts.get(t) or identity(len(g.tensors[t].shape or ())) for t in n.inputs]
        if kind not in ("conv", "pool", "elemwise") and any(map(is_blocked, (lout, *lin))):
            kind = "opaque"  # only these kinds run on NCHW[b]c
        if kind == "conv" and any(map(is_blocked, (lout, *lin))):
            from .conv import is_depthwise

            if is_depthwise(g, i):
                kind = "opaque"  # no blocked depthwise kernel: NCHW, converted around it
        if kind == "elemwise" and is_blocked(lout):
            cost = self.kernel(g, i)
            for t, lay in zip(n.inputs, lin):
                tt = g.tensors[t]
                if not tt.shape or tt.kind == "const":
                    continue  # a constant (channel dim 1 or C: broadcasting) is stored blocked
                if tt.shape == out.shape:
                    if lay != lout:
                        cost += self.convert(tt.nbytes, lay, lout)
                elif any(d != 1 for j, d in enumerate(tt.shape) if j != len(tt.shape) - 3):
                    cost += self.convert(tt.nbytes, lout)  # [1, C, 1, 1] (a bias) is a view
            return cost
        if kind == "permute":
            x = g.tensors[n.inputs[0]]
            if x.kind == "const":  # FoldConstant computes it at compile time
                return 0.0
            q = compose(inverse(lin[0]), compose(n.attrs["axes"], lout))
            return self.transpose(out.nbytes) if moves_data(q, phys_shape(x.shape, lin[0])) else 0.0
        if kind == "matmul":
            return self.matmul(g, i, lin, lout)
        cost = self.kernel(g, i)
        if kind == "elemwise":
            for t, lay in zip(n.inputs, lin):
                tt = g.tensors[t]
                if tt.kind == "const" or not tt.shape:
                    continue
                if tt.shape == out.shape:
                    if lay != lout:
                        cost += self.convert(tt.nbytes, lay)
                    continue
                if lay != identity(len(tt.shape)) and _moves(lay, tt.shape):  # else a view
                    cost += self.convert(tt.nbytes, lay)
                full = (1,) * (len(out.shape) - len(tt.shape)) + tuple(tt.shape)
                if _moves(lout, full):
                    cost += self.convert(tt.nbytes)
            return cost
        if kind == "conv":
            cost = self.launch  # conv() prices the kernel's bytes (or measured them)
        if kind == "conv" and is_blocked(lout):
            li = lin[0]
            if li == identity(4) or is_blocked(li):
                return cost + self.conv(g, i, li, lout)
            return cost + self.conv(g, i, identity(4), lout) + self.convert(
                g.tensors[n.inputs[0]].nbytes)  # NHWC -> NCHW first: a permute
        if kind == "conv":
            from .layouts import CONV_LAYOUTS

            ok_in, ok_out = lin[0] in CONV_LAYOUTS, lout in CONV_LAYOUTS
            cost += self.conv(g, i, lin[0] if ok_in else identity(4),
                              lout if ok_out else identity(4))
            if not ok_in:
                cost += self.convert(g.tensors[n.inputs[0]].nbytes, lin[0])
            if not ok_out:
                cost += self.convert(out.nbytes)
            return cost
        if kind == "pool" and pool_ok(lin[0], lout):
            return cost
        if kind == "axis" and n.op == "relax.mean":  # reduces in its input's layout
            if mean_converts(g, i, lin[0], lout):
                cost += self.convert(out.nbytes, lout)
            return cost
        if kind == "axis" and axis_ok(g, i, lout):
            if self.inplace_concat and concat_in_place(g, i, lout):
                cost = 0.0  # the memory stage drops the copy
            shared = axis_inputs(g, i)
            for j, (t, lay) in enumerate(zip(n.inputs, lin)):
                tt = g.tensors[t]
                if j in shared and tt.kind != "const" and lay != lout:
                    cost += self.convert(tt.nbytes)
            if strided_reduction(g, i, lout):
                cost += self.strided_read * out.nbytes / self.bandwidth
            return cost
        for t, lay in zip(n.inputs, lin):  # opaque: transpose back to default around it
            tt = g.tensors[t]
            if tt.kind != "const" and lay != identity(len(lay)):
                cost += self.convert(tt.nbytes, lay)
        if lout != identity(len(lout)):
            cost += self.convert(out.nbytes, lout)
        return cost


def moved_bytes(g: OpGraph, i: int) -> int:
    """Bytes node ``i`` reads and writes."""
    n = g.nodes[i]
    return g.tensors[n.output].nbytes + sum(g.tensors[t].nbytes for t in n.inputs)


# ops FuseOps puts an elementwise consumer into (OutEWiseFusable and injective producers)
FUSES_EPILOGUE = {"relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul"}


def fused_epilogue(g: OpGraph, i: int) -> bool:
    """An elementwise node FuseOps computes inside the kernel before it: the sole consumer of a
    same-shape input that a conv, matmul or another elementwise op produces (a bias add, an
    activation, a residual add). Priced as a kernel of its own, SqueezeNet's 52 bias adds and
    ReLUs made 4.2 of its 12.2 ms modelled run (3.7 ms measured), and a plan's gain a third of
    its real share."""
    n = g.nodes[i]
    if op_kind(g, i) != "elemwise":
        return False
    out = g.tensors[n.output]
    for t in n.inputs:
        p = g.producer.get(t)
        if p is None or g.tensors[t].shape != out.shape or g.consumers.get(t, []) != [i]:
            continue
        if g.nodes[p].op in FUSES_EPILOGUE or op_kind(g, p) == "elemwise":
            return True
    return False


def concat_in_place(g: OpGraph, i: int, lout) -> bool:
    """A concat whose axis, in layout ``lout``, has only unit dims outside it: its inputs are
    contiguous slabs of the output, which the memory stage writes them into (NCHW channels of
    one image; not the channels of NHWC)."""
    n = g.nodes[i]
    out = g.tensors[n.output]
    if n.op != "relax.concat" or is_blocked(lout) or len(n.attrs.get("axis_list", ())) != 1:
        return False
    axis = n.attrs["axis_list"][0] % len(out.shape)
    outer = list(lout)[: list(lout).index(axis)]
    return all(out.shape[d] == 1 for d in outer)


def plan_cost(g: OpGraph, model, layouts: dict) -> float:
    """Modelled cost of the whole graph under ``layouts`` (missing tensors: default)."""
    return sum(model.node(g, i, layouts) for i in range(len(g.nodes)))


def _moves(lay, shape) -> bool:
    """Whether holding a tensor of logical ``shape`` in ``lay`` (a permutation or ``NCHW[b]c``)
    moves its bytes; a broadcast operand ``[1, C, 1, 1]`` is a view of either."""
    if is_blocked(lay):
        return len(shape) == 4 and (shape[2] != 1 or shape[3] != 1)
    return moves_data(inverse(lay), phys_shape(shape, lay))
