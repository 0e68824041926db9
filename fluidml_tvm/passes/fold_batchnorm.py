"""``FluidMLFoldBatchNorm``: inference BatchNorm folded into the convolution before it.

TVM's importer keeps an ONNX ``BatchNormalization`` as ``R.nn.batch_norm``, a tuple-valued op that
FuseOps does not fuse with the convolution feeding it: every BatchNorm becomes a kernel of its
own, one more pass over the activation (tiny ResNet-50: 16 ``fused_batch_norm_*`` kernels beside
the convolutions). Exporters that fold it themselves (torch in eval mode) leave none; others
(Paddle, TF, hand-built graphs) do. With constant statistics, ``batch_norm(y)`` is
``y * s + t`` per channel (``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``), so:

* after a ``conv2d`` (NCHW data, OIHW weight, channel axis 1) whose only user is the BatchNorm,
  optionally through ``+ bias``: the weight is scaled per output channel at compile time
  (``W * s``) and the BatchNorm becomes a bias add (``+ t``, or ``+ bias * s + t``), which FuseOps
  puts in the convolution's epilogue with the activation after it;
* anywhere else: ``y * s + t`` with constant ``s`` and ``t``, elementwise, fused with its
  neighbours.

What is rewritten: BatchNorm in inference mode (``training`` false) whose gamma, beta, mean and
var are constants and whose tuple is read only at index 0 (the normalized tensor). Everything
else is left as it is, with the reason in the stage's decisions (``fluidml.fold_batchnorm``
kill switch). The numbers are the same up to float rounding (the scale is computed in float64
and rounded once into the weight).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from ..decisions import Decision, attach, note
from .relax_util import const_value as _const
from .relax_util import dataflow_blocks
from .relax_util import is_op as _is

log = logging.getLogger("fluidml_tvm.fold_batchnorm")
STAGE = "fold_batchnorm"
_OP = tvm.ir.Op.get
BATCH_NORM, CONV2D, ADD = _OP("relax.nn.batch_norm"), _OP("relax.nn.conv2d"), _OP("relax.add")


def _conv_weight_axis0_is_output(conv) -> bool:
    a = conv.attrs
    return (str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW"
            and str(a.out_layout) in ("NCHW", "") and _const(conv.args[1]) is not None)


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    """Rewrites ``y = bn[0]`` for every matched BatchNorm ``bn`` (``plans``: bn var -> plan)."""

    def __init__(self, mod, plans: dict):
        super().__init__(mod)
        self.plans = plans

    def visit_var_binding_(self, binding):  # noqa: N802 - TVM visitor name
        value = binding.value
        if isinstance(value, relax.TupleGetItem) and value.tuple_value in self.plans:
            plan = self.plans[value.tuple_value]
            new = self.builder_.normalize(self._emit(plan))
            self.set_var_remap(binding.var, self.builder_.emit(new))
            return
        super().visit_var_binding_(binding)

    def _emit(self, plan):
        scale, shift, dtype, axis, rank = plan["scale"], plan["shift"], plan["dtype"], \
            plan["axis"], plan["rank"]
        bshape = [1] * rank
        bshape[axis] = -1
        if plan.get("conv") is not None:
            conv, w = plan["conv"], plan["weight"]
            w2 = (w.astype("float64") * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
            data = self.visit_expr(conv.args[0])
            new_conv = relax.Call(conv.op, [data, relax.const(w2, str(w2.dtype))], conv.attrs,
                                  conv.ty_args)
            y = self.builder_.emit(self.builder_.normalize(new_conv))
            t = shift + (plan["bias"] * scale if plan.get("bias") is not None else 0.0)
            return relax.op.add(y, relax.const(t.reshape(bshape).astype(dtype), dtype))
        x = self.visit_expr(plan["input"])
        y = self.builder_.emit(relax.op.multiply(
            x, relax.const(scale.reshape(bshape).astype(dtype), dtype)))
        return relax.op.add(y, relax.const(shift.reshape(bshape).astype(dtype), dtype))


def _plans(func: relax.Function, decisions: list) -> dict:
    """Matched BatchNorms of ``func``: bn var -> what to emit instead of its index-0 result."""
    plans = {}
    for _, value_of, users, outside in dataflow_blocks(func):
        for var, value in value_of.items():
            if not _is(value, BATCH_NORM):
                continue
            why = _why_not(var, value, value_of, users, outside)
            if why:
                decisions.append(Decision(STAGE, var.name, "kept", why))
                continue
            plans[var] = plan = _plan(value, value_of, users, outside)
            fused = plan.get("conv") is not None
            how = f"folded into the weights of {plan['conv_name']}" if fused \
                else "multiply-add per channel"
            decisions.append(Decision(STAGE, var.name, "folded", how,
                                      {"channels": int(plan["scale"].size)}))
    return plans


def _why_not(var, bn, value_of, users, outside) -> str:
    a = bn.attrs
    if bool(a.training):
        return "training mode"
    if any(_const(x) is None for x in bn.args[1:5]):
        return "gamma/beta/mean/var are not all constants"
    if var in outside:
        return "its tuple leaves the dataflow block"
    for u in users.get(var, []):
        item = value_of.get(u)
        if not isinstance(item, relax.TupleGetItem):
            return "its tuple is used whole"
        if item.index != 0 and (users.get(u) or u in outside):  # an unused [1]/[2]: dead code
            return "a result other than the normalized tensor is used"
    shape = getattr(bn.args[0].ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return "unknown rank"
    return ""


def _plan(bn, value_of, users, outside) -> dict:
    a = bn.attrs
    gamma, beta, mean, var = (_const(x).astype("float64") for x in bn.args[1:5])
    scale = (gamma if bool(a.scale) else 1.0) / np.sqrt(var + float(a.epsilon))
    shift = (beta if bool(a.center) else 0.0) - mean * scale
    x = bn.args[0]
    rank = len(x.ty.shape.values)
    axis = int(a.axis) % rank
    plan = {"scale": scale, "shift": shift, "dtype": str(x.ty.dtype), "axis": axis, "rank": rank,
            "input": x}
    if axis != 1 or not isinstance(x, relax.Var) or x in outside or len(users.get(x, [])) != 1:
        return plan
    producer, bias = value_of.get(x), None
    if _is(producer, ADD):  # conv + constant bias, then the BatchNorm
        lhs, rhs = producer.args
        b = _const(rhs, value_of)
        if isinstance(lhs, relax.Var) and b is not None and lhs not in outside \
                and len(users.get(lhs, [])) == 1 and b.size == scale.size:
            bias, producer, x = b.reshape(-1).astype("float64"), value_of.get(lhs), lhs
    if _is(producer, CONV2D) and _conv_weight_axis0_is_output(producer) \
            and _const(producer.args[1]).shape[0] == scale.size:
        plan.update(conv=producer, weight=_const(producer.args[1]), bias=bias, conv_name=x.name)
    return plan


@tvm.transform.module_pass(opt_level=0, name="FluidMLFoldBatchNorm")
class FluidMLFoldBatchNorm:
    """Fold every inference BatchNorm with constant statistics (see the module docstring)."""

    def __init__(self):
        self.decisions: list[Decision] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.decisions = []
        out = mod
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            plans = _plans(func, self.decisions)
            if not plans:
                continue
            fold = _Fold(out, plans)
            fold.builder_.update_func(gv, fold.visit_expr(func))
            out = fold.builder_.get()
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        found = self.decisions or [note(STAGE, "no BatchNormalization")]
        log.info("%d BatchNorms folded", sum(d.choice == "folded" for d in self.decisions))
        return attach(out, STAGE, found)
