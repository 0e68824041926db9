"""``FluidMLWinograd``: 3x3 stride-1 convolutions computed with Winograd's F(4x4, 3x3).

A direct 3x3 convolution does 9 multiply-adds per (output position, input channel, output
channel); this project's direct kernels already run them at the host's fp32 peak, so the way past
ONNX Runtime's (equally peak-bound) direct kernels is fewer of them. F(4x4, 3x3) computes each 4x4
output tile from a 6x6 input tile with 36 products per channel pair instead of 144 (4x fewer);
the products are 36 independent matmuls, which the matmul rule runs at peak (kernels and matrices:
:mod:`.winograd_kernels`). Measured here on their own (2-core AMD EPYC, 2 threads, direct = the
conv2d rule's fastest measured tile; transforms + matmuls): 64->64 on 56x56 1054 -> 358 us,
256->256 on 14x14 1014 -> 423 us, 16->64 on 55x55 285 -> 129 us, 512->512 on 7x7 ~1030 ->
574 us (its 36 matmuls have 4 rows: 2x2 tiles). In models (``fluidml.winograd`` A/B, results
``2026-12-07-ab-winograd.md``): ResNet-18 0.665x, GoogLeNet 0.678x, DenseNet-121 0.812x,
SqueezeNet 0.853x, ResNet-50 0.881x. The cost: memory (the transformed input and products are
2.25x the maps they come from: VGG-11 plans 20.7 MiB instead of 4.6, as it runs 2.1x faster)
and compile time (two transform kernels and a matmul per distinct convolution shape: GoogLeNet
cold 10.9 -> 18.4 s in-process; a warm compile 1.9x stock TVM's, LLVM's 0.37 s for each output
transform; parsed kernels are cached as JSON, :func:`.winograd_kernels.parse`).

Rewritten (before LegalizeOps, after the layout stage: only convolutions left NCHW)::

    y = conv2d(x, W)            ->  V = winograd_input(x)             [36, tiles, C]
    [y = y + b]                     M = matmul(V, U)                 U = transform of W, [36, C, K]
    [y = relu(y)]                   y = winograd_output(M[, b])      NCHW, bias and ReLU in

for a ``conv2d`` with NCHW data, OIHW constant float32 weight, a 3x3 window, stride 1, dilation 1,
one group, static shapes, at least :data:`MIN_CHANNELS` input and output channels and an output of
at least 4x4. A bias add (a ``[1, K, 1, 1]`` constant) and a ReLU that are the only users of
what they read are computed in the output transform (TVM's ONNX importer makes a Clip two TE
kernels, which FuseOps fuses with the output transform's successors instead). The result
differs from the direct convolution by float rounding (relative 1e-6 to 3e-6 per layer on
random data; the weights are transformed in float64). Each convolution's decision and reason
are in the stage's decisions; ``fluidml.winograd=0`` is the kill switch.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from ..decisions import Decision, attach, note
from . import winograd_kernels as wk
from .relax_util import const_value as _const
from .relax_util import dataflow_blocks, static_shape
from .relax_util import is_op as _is

log = logging.getLogger("fluidml_tvm.winograd")
STAGE = "winograd"
TILE = 4  # F(4x4, 3x3): 6x6 input tiles
# Fewer channels than this on either side: the 36 matmuls are too thin to pay for the transforms.
MIN_CHANNELS = 16
_OP = tvm.ir.Op.get
CONV2D, ADD, RELU = _OP("relax.nn.conv2d"), _OP("relax.add"), _OP("relax.nn.relu")


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def why_not(conv) -> str:
    """Why ``conv`` (a ``relax.nn.conv2d`` call) is not computed with Winograd ('' if it is)."""
    a = conv.attrs
    if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" \
            or str(a.out_layout) not in ("NCHW", ""):
        return f"layout {a.data_layout}/{a.kernel_layout} (NCHW/OIHW only)"
    w = _const(conv.args[1])
    if w is None:
        return "weight not a constant"
    out = static_shape(conv.ty)
    if static_shape(conv.args[0].ty) is None or out is None:
        return "dynamic shape"
    return why_not_shapes(str(w.dtype), str(conv.args[0].ty.dtype), tuple(w.shape),
                          _ints(a.strides), _ints(a.dilation), int(a.groups), tuple(out))


def why_not_shapes(w_dtype: str, x_dtype: str, w_shape: tuple, strides, dilation, groups: int,
                   out_shape: tuple) -> str:
    """:func:`why_not` of an NCHW/OIHW conv2d with a constant weight, from its dtypes, shapes and
    attributes (also read by the layout stage, which keeps such a convolution NCHW)."""
    if w_dtype != "float32" or x_dtype != "float32":
        return "not float32"
    if tuple(w_shape[2:]) != (3, 3):
        return f"window {w_shape[2]}x{w_shape[3]} (3x3 only)"
    if list(strides) != [1, 1] or list(dilation) != [1, 1]:
        return f"stride {list(strides)}, dilation {list(dilation)} (1 only)"
    if groups != 1:
        return f"{groups} groups"
    _, _, ho, wo = out_shape
    if min(w_shape[0], w_shape[1]) < MIN_CHANNELS:
        return f"{w_shape[1]} -> {w_shape[0]} channels (fewer than {MIN_CHANNELS})"
    if min(ho, wo) < TILE:
        return f"output {ho}x{wo} smaller than a {TILE}x{TILE} tile"
    return ""


def _plans(func: relax.Function, decisions: list) -> tuple[dict, set]:
    """``{var bound to the chain's result: plan}`` and the vars of the chain to drop."""
    plans, dropped = {}, set()
    for _, value_of, users, outside in dataflow_blocks(func):

        def only_user(v, users=users, outside=outside):
            us = users.get(v, [])
            return us[0] if len(us) == 1 and v not in outside else None

        for var, value in value_of.items():
            if not _is(value, CONV2D):
                continue
            why = why_not(value)
            if why:
                decisions.append(Decision(STAGE, var.name, "direct", why))
                continue
            _, k, ho, wo = static_shape(value.ty)
            plan = {"conv": value, "bias": None, "activation": None}
            end, chain = var, [var]
            nxt = only_user(end)
            if nxt is not None and _is(value_of.get(nxt), ADD):
                lhs, rhs = value_of[nxt].args
                b = _const(rhs, value_of)
                if lhs.same_as(end) and b is not None and b.dtype == np.float32 \
                        and b.shape == (1, k, 1, 1):
                    plan["bias"] = b.reshape(k)
                    end = nxt
                    chain.append(end)
                    nxt = only_user(end)
            if nxt is not None and _is(value_of.get(nxt), RELU):
                plan["activation"] = "relu"
                end = nxt
                chain.append(end)
            plans[end] = plan
            dropped.update(chain[:-1])
            w = _const(value.args[1])
            fused = (["bias"] if plan["bias"] is not None else []) + \
                ([plan["activation"]] if plan["activation"] else [])
            c_in, k_out = w.shape[1], w.shape[0]
            decisions.append(Decision(
                STAGE, var.name, f"F({TILE}x{TILE},3x3)",
                f"{c_in} -> {k_out} channels, output {ho}x{wo}: {(TILE + 2) ** 2} matmuls "
                f"[tiles x {c_in}] @ [{c_in} x {k_out}]"
                + (f"; {' + '.join(fused)} in the output transform" if fused else ""),
                {"tile": TILE}))
    return plans, dropped


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, plans: dict, dropped: set, lanes: int, cache_dir: str | None = None):
        super().__init__(mod)
        self.plans, self.dropped, self.lanes = plans, dropped, lanes
        self.cache_dir = cache_dir
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}

    def visit_var_binding_(self, binding):  # noqa: N802 - TVM visitor name
        if binding.var in self.dropped:
            return
        plan = self.plans.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        self.set_var_remap(binding.var, self.builder_.emit(self._emit(plan)))

    def _kernel(self, script: str, name: str) -> tvm.ir.GlobalVar:
        """One PrimFunc per distinct kernel (convolutions of one shape share it)."""
        gv = self.kernels.get(script)
        if gv is None:
            gv = self.kernels[script] = self.builder_.add_func(
                wk.parse(script, self.cache_dir), name)
        return gv

    def _emit(self, plan):
        conv = plan["conv"]
        x = self.visit_expr(conv.args[0])
        w = _const(conv.args[1])
        n, c, h, wd = static_shape(conv.args[0].ty)
        _, k, ho, wo = static_shape(conv.ty)
        pads = _ints(conv.attrs.padding)  # top, left, bottom, right
        a = TILE + 2
        nh, nw = wk.tile_grid((ho, wo), TILE)
        tiles = n * nh * nw
        gin = self._kernel(wk.input_transform(n, c, h, wd, (pads[0], pads[1]), (ho, wo), TILE,
                                             self.lanes),
                           "winograd_input")
        v = self.builder_.emit(relax.call_tir(
            gin, [x], relax.TensorType((a * a, tiles, c), "float32")))
        u = wk.weight_transform(w, TILE)
        mm = self.builder_.emit(relax.op.matmul(v, relax.const(u, "float32")))
        gout = self._kernel(wk.output_transform(n, k, (ho, wo), TILE,
                                                bias=plan["bias"] is not None,
                                                activation=plan["activation"],
                                                lanes=self.lanes),
                            "winograd_output")
        args = [mm] + ([relax.const(plan["bias"], "float32")] if plan["bias"] is not None else [])
        return relax.call_tir(gout, args, relax.TensorType((n, k, ho, wo), "float32"))


@tvm.transform.module_pass(opt_level=0, name="FluidMLWinograd")
class FluidMLWinograd:
    """Every eligible 3x3 convolution through Winograd F(4x4, 3x3) (the module docstring)."""

    def __init__(self, target=None, cache_dir: str | None = None):
        self.target, self.cache_dir = target, cache_dir  # cache_dir: parsed kernels (wk.parse)
        self.decisions: list[Decision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from ..schedules.target_info import cpu_info

        self.decisions = []
        lanes = cpu_info(self.target).lanes(32) if self.target is not None else 16
        out = mod
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            plans, dropped = _plans(func, self.decisions)
            if not plans:
                continue
            rw = _Rewrite(out, plans, dropped, lanes, self.cache_dir)
            rw.builder_.update_func(gv, rw.visit_expr(func))
            out = rw.builder_.get()
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        found = self.decisions or [note(STAGE, "no conv2d")]
        log.info("%d convolutions through Winograd",
                 sum(d.choice != "direct" for d in self.decisions))
        return attach(out, STAGE, found)
