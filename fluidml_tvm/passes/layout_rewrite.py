"""``FluidMLLayout``: choose every tensor's layout (FluidML) and rewrite the Relax IR to it.

Runs on high-level Relax (``R.matmul``, ``R.permute_dims``, elementwise ops, ...) before
LegalizeOps/FoldConstant, inside ``with target:`` or with a target given. For each Relax function
it builds the operator graph (:mod:`.graph`), plans layouts (:mod:`.layout_dp`,
:mod:`.layout_vote`) under a cost model (:mod:`.layout_cost`) and realizes the plan:

* a tensor in layout ``L`` is held physically permuted (``x_phys = permute_dims(x, L)``);
* ``permute_dims`` whose input and output are the same bytes becomes an alias (no kernel), or a
  ``reshape`` when only unit dims move;
* ``matmul`` with any non-default operand/result becomes one ``call_tir`` kernel that indexes A,
  B and C through their permutations (a transposed-operand matmul, like TVM's
  FuseTransposeMatmul but for any permutation of any rank); the schedules read it directly;
* elementwise ops run on the permuted tensors; broadcast constants are stored pre-permuted
  (new constants, so FoldConstant has nothing to fold back);
* ``strided_slice``, ``concat``, ``softmax``, ``log_softmax`` and ``layer_norm`` run on the
  permuted tensors with their axes remapped to physical ones (a slice of the permuted tensor is
  the permuted slice), so a layout flows through rotary embeddings and attention scores;
* every other op gets its inputs transposed back to the default layout - an explicit transform,
  only where no kernel absorbs the layout (the plan already paid for it in the cost model).

A plan is a model's prediction; ``fluidml.layout_verify`` (on by default) checks it: the first
compile of a plan times the model with the plan and without it (:mod:`.layout_gain`, in
``fluidml_tvm.compile``) and caches the ratio under the plan's id; a plan measured no faster
(:func:`.layout_gain.keeps`: on/off at most 0.995 with three quarters of the rounds faster) is
not applied, here, with the number in the report.

Graph inputs, outputs and dynamic-shape tensors keep the default layout. ``apply=False`` only
records the plans (:attr:`FluidMLLayout.plans`, :func:`report`) and leaves the IR unchanged. The
report is also left in the module attribute ``fluidml.layout_report`` (read it with a pass
instrument after ``FluidMLLayout``, as ``fluidml-tvm compile --report`` can).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax, te

from . import layout_gain
from .graph import build_graph
from .layout_conv import block_activation
from .layout_cost import (
    axis_inputs,
    axis_ok,
    compose,
    default_of,
    identity,
    inverse,
    is_blocked,
    moves_data,
    op_kind,
    phys_shape,
    pool_ok,
)
from .layout_dp import candidates
from .layout_vote import plan_layouts
from .layout_vote import report as plan_report

log = logging.getLogger("fluidml_tvm.layout")


def permuted_matmul(a, b, la, lb, lo, a_shape, b_shape, out_shape, dtype):
    """te compute of ``C = A @ B`` where A, B, C are held in layouts ``la``, ``lb``, ``lo``
    (logical shapes given; ``a``/``b`` are the physical te tensors); returns physical C."""
    r = len(out_shape)
    k = te.reduce_axis((0, a_shape[-1]), name="k")

    def operand(t, lay, shape, last2, pidx_log):
        nb = len(shape) - 2
        batch = [0 if shape[j] == 1 else pidx_log[r - 2 - nb + j] for j in range(nb)]
        idx = batch + last2
        return t[tuple(idx[d] for d in lay)]

    def fcompute(*pidx):
        lg = [None] * r
        for p, d in enumerate(lo):
            lg[d] = pidx[p]
        x = operand(a, la, a_shape, [lg[r - 2], k], lg)
        y = operand(b, lb, b_shape, [k, lg[r - 1]], lg)
        return te.sum(x.astype(dtype) * y.astype(dtype), axis=k)

    return te.compute(phys_shape(out_shape, lo), fcompute, name="T_matmul")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, g, exprs, layouts):
        super().__init__(mod)
        self.g, self.layouts = g, layouts
        self.name_of = {e: n for n, e in exprs.items()}
        self.node_of = {n.output: i for i, n in enumerate(g.nodes)}
        self.phys: dict = {}  # tensor name -> expr holding it in its planned layout

    def lay(self, name):
        return self.layouts.get(name) or identity(len(self.g.tensors[name].shape or ()))

    def logical(self, name, expr):
        """``expr`` (tensor ``name``) in the default layout; emits the transform back once."""
        lay = self.lay(name)
        default = default_of(lay)
        if lay == default:
            return expr
        key = ("logical", name)
        if key not in self.phys:
            self.phys[key] = self.convert(expr, name, lay, default)
        return self.phys[key]

    def convert(self, expr, name, src, dst):
        """Tensor ``name`` held in layout ``src`` re-held in ``dst`` (one permute or a view;
        to or from ``NCHW[b]c``: a ``layout_transform``, through NCHW)."""
        if is_blocked(src) or is_blocked(dst):
            from .layout_conv import from_blocked, to_blocked

            if tuple(src) == tuple(dst):
                return expr
            if is_blocked(src):
                expr = self.builder_.emit(relax.op.layout_transform(expr, from_blocked(src[4])))
                src = identity(4)
            if not is_blocked(dst):
                return self.convert(expr, name, src, dst)
            expr = self.convert(expr, name, src, identity(4))
            return self.builder_.emit(relax.op.layout_transform(expr, to_blocked(dst[4])))
        q = compose(inverse(src), dst)
        shape = self.g.tensors[name].shape
        if q == identity(len(q)):
            return expr
        if not moves_data(q, phys_shape(shape, src)):
            return self.builder_.emit(relax.op.reshape(expr, phys_shape(shape, dst)))
        return self.builder_.emit(relax.op.permute_dims(expr, list(q)))

    def arg(self, a):
        """A call argument, remapped; non-tensor arguments visited as usual."""
        name = self.name_of.get(a)
        if name is None or self.g.tensors[name].kind == "const":
            return name, self.visit_expr(a)
        return name, self.phys.get(name, self.visit_expr(a))

    def visit_var_binding_(self, binding):  # noqa: N802 - TVM visitor name
        var = binding.var
        name = self.name_of.get(var)
        if name is None or name not in self.node_of:
            for v in relax.analysis.free_vars(binding.value):
                n = self.name_of.get(v)
                if n in self.phys and n in self.layouts:
                    self.set_var_remap(v, self.logical(n, self.phys[n]))
            return super().visit_var_binding_(binding)
        i = self.node_of[name]
        kind = op_kind(self.g, i)
        lout = self.lay(name)
        touched = any(t in self.layouts for t in (name, *self.g.nodes[i].inputs))
        value = binding.value
        produced = None  # the layout the emitted call writes (None: as its kind absorbs)
        if not touched:
            new = self.visit_expr(value)
            produced = lout  # the default: nothing around it has a layout
        elif kind == "permute":
            src = value.args[0]
            xname, x = self.arg(src)
            q = compose(inverse(self.lay(xname)), compose(self.g.nodes[i].attrs["axes"], lout))
            res = self.convert_q(x, xname, q, name)
            if not isinstance(var, relax.DataflowVar):  # used outside the block: bind it
                res = self.builder_.emit_output(res, var.name)
            self.phys[name] = res  # an alias of a constant stays a constant (kernels pack it)
            if isinstance(res, relax.Var):
                self.set_var_remap(var, res)
            return
        elif kind == "matmul":
            new = self.matmul(i, value)
        elif kind == "elemwise":
            new = self.elemwise(i, value, lout)
        elif kind == "axis" and axis_ok(self.g, i, lout):
            new = self.axis_op(i, value, lout)
        elif kind == "conv":
            new, produced = self.conv(i, value, lout)
        elif kind == "pool" and pool_ok(self.lay(self.g.nodes[i].inputs[0]), lout):
            new = self.pool(value, lout)
        else:
            new = self.opaque(value)
            kind = "opaque"
        if produced is None:
            absorbs = kind in ("matmul", "elemwise", "axis", "pool")
            produced = lout if absorbs else default_of(lout)
        out = self.builder_.emit(new, var.name) if isinstance(var, relax.DataflowVar) \
            else self.builder_.emit_output(new, var.name)
        if produced != lout:
            out = self.convert(out, name, produced, lout)
        self.phys[name] = out
        self.set_var_remap(var, out)

    def convert_q(self, x, xname, q, name):
        shape_in = phys_shape(self.g.tensors[xname].shape, self.lay(xname))
        if q == identity(len(q)):
            return x
        if not moves_data(q, shape_in):
            return self.builder_.emit(relax.op.reshape(x, phys_shape(shape_in, q)), name)
        return self.builder_.emit(relax.op.permute_dims(x, list(q)), name)

    def opaque(self, value):
        if not isinstance(value, relax.Call):  # a TupleGetItem of a tuple-valued op (batch_norm)
            return self.visit_expr(value)  # its producer keeps the default layouts
        args = []
        for a in value.args:
            n, e = self.arg(a)
            args.append(self.logical(n, e) if n is not None else e)
        return relax.Call(value.op, args, value.attrs, value.ty_args)

    def matmul(self, i, value):
        n = self.g.nodes[i]
        names = [self.name_of.get(a) for a in value.args]
        exprs = [self.arg(a)[1] for a in value.args]
        lays = [self.lay(t) for t in names]
        shapes = [self.g.tensors[t].shape for t in names]
        out = self.g.tensors[n.output]
        fn = lambda a, b: permuted_matmul(  # noqa: E731
            a, b, lays[0], lays[1], self.lay(n.output), shapes[0], shapes[1], out.shape,
            out.dtype)
        return self.builder_.call_te(fn, exprs[0], exprs[1], primfunc_name_hint="matmul_layout")

    def conv(self, i, value, lout):
        """conv2d reading its input in its layout (NCHW/NHWC, else converted to NCHW) and
        writing ``lout`` (NCHW/NHWC, else NCHW); returns the call and the layout it writes."""
        from .layout_conv import CONV_LAYOUTS, permuted_conv2d

        n = self.g.nodes[i]
        xname, x = self.arg(value.args[0])
        lin = self.lay(xname)
        if is_blocked(lout):
            return self.blocked_conv(i, value, xname, x, lin, lout), lout
        if lin not in CONV_LAYOUTS:
            x, lin = self.logical(xname, x), identity(4)
        lo = lout if lout in CONV_LAYOUTS else identity(4)
        if lin == identity(4) and lo == identity(4):
            return relax.Call(value.op, [x, self.visit_expr(value.args[1])], value.attrs,
                              value.ty_args), lo
        c = n.attrs["conv"]
        out = self.g.tensors[n.output]
        fn = lambda d, w: permuted_conv2d(  # noqa: E731
            d, w, lin, lo, out.shape, c["strides"], c["padding"], c["dilation"], out.dtype)
        call = self.builder_.call_te(fn, x, self.visit_expr(value.args[1]),
                                     primfunc_name_hint="conv2d_layout")
        return call, lo

    def blocked_conv(self, i, value, xname, x, lin, lout):
        """conv2d writing ``NCHW[b]c`` (reading NCHW or a blocked input), its weight stored
        pre-blocked (a new constant) for :func:`.layout_conv.blocked_conv2d`."""
        from .layout_conv import block_weight, blocked_conv2d

        if not (lin == identity(4) or is_blocked(lin)):
            x, lin = self.logical(xname, x), identity(4)
        w = value.args[1]
        if not isinstance(w, tvm.ir.GenericConst):
            raise ValueError(f"conv2d {self.g.nodes[i].output}: weight is not a constant")
        b = lout[4]
        arr = w.value.numpy()
        wb = relax.const(block_weight(arr, lin, b), str(arr.dtype))
        c = self.g.nodes[i].attrs["conv"]
        out = self.g.tensors[self.g.nodes[i].output]
        fn = lambda d, k: blocked_conv2d(  # noqa: E731
            d, k, lin, b, out.shape, c["strides"], c["padding"], c["dilation"], out.dtype)
        return self.builder_.call_te(fn, x, wb, primfunc_name_hint="conv2d_nchwc")

    def blocked_operand(self, e, full, b: int):
        """A non-constant broadcast operand (``full``: its 4-d shape) of an elementwise op on
        ``NCHW[b]c`` tensors, re-held for it (channel dim C: blocked; 1: a view)."""
        from .layout_conv import to_blocked

        n_, c, h, w = full
        if c == 1:
            return self.builder_.emit(relax.op.reshape(e, (n_, 1, h, w, 1)))
        if n_ * h * w == 1:  # [1, C, 1, 1] (a bias): the blocked order is the same bytes
            return self.builder_.emit(relax.op.reshape(e, (1, c // b, 1, 1, b)))
        return self.builder_.emit(relax.op.layout_transform(e, to_blocked(b)))

    def pool(self, value, lout):
        """A pool on the tensor held in ``lout`` (NCHW or NHWC), through its layout attrs."""
        from .layout_conv import layout_name

        _, x = self.arg(value.args[0])
        a = value.attrs
        name = layout_name(lout)
        op = value.op.name
        if op == "relax.nn.adaptive_avg_pool2d":
            size = [int(v) for v in a.output_size] if a.output_size is not None else None
            return relax.op.nn.adaptive_avg_pool2d(x, size, layout=name, out_layout=name)
        f = relax.op.nn.max_pool2d if op == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
        return f(x, [int(v) for v in a.pool_size], [int(v) for v in a.strides],
                 [int(v) for v in a.padding], [int(v) for v in a.dilation], bool(a.ceil_mode),
                 bool(a.count_include_pad), layout=name, out_layout=name)

    def axis_op(self, i, value, lout):
        """slice/concat/softmax/layer_norm run on the tensors held in ``lout``, axes remapped."""
        n = self.g.nodes[i]
        pos = inverse(lout)
        phys_axes = [pos[a] for a in n.attrs["axis_list"]]
        shared = {n.inputs[j] for j in axis_inputs(self.g, i)}

        def held(a):
            name, e = self.arg(a)
            if name is None or name not in shared:
                return e
            t = self.g.tensors[name]
            if t.kind == "const":
                arr = np.ascontiguousarray(np.transpose(a.value.numpy(), lout))
                return relax.const(arr, t.dtype)
            return self.convert(e, name, self.lay(name), lout)

        op = n.op
        if op == "relax.concat":
            (tup,) = value.args
            fields = tup.fields if isinstance(tup, relax.Tuple) else None
            if fields is None:  # a tuple variable: its fields are not visible here
                return self.opaque(value)
            return relax.op.concat([held(f) for f in fields], axis=phys_axes[0])
        x = held(value.args[0])
        if op == "relax.strided_slice":
            return relax.op.strided_slice(
                x, phys_axes, *[self.visit_expr(a) for a in value.args[2:]],
                assume_inbound=bool(value.attrs.assume_inbound))
        if op == "relax.nn.softmax":
            return relax.op.nn.softmax(x, axis=phys_axes[0])
        if op == "relax.nn.log_softmax":
            return relax.op.nn.log_softmax(x, axis=phys_axes[0])
        a = value.attrs  # layer_norm: gamma/beta indexed by the (order-kept) axes as before
        return relax.op.nn.layer_norm(x, held(value.args[1]), held(value.args[2]),
                                      axes=phys_axes, epsilon=float(a.epsilon),
                                      center=bool(a.center), scale=bool(a.scale))

    def elemwise(self, i, value, lout):
        out = self.g.tensors[self.g.nodes[i].output]
        rank = len(out.shape)
        args = []
        for a in value.args:
            n, e = self.arg(a)
            t = self.g.tensors.get(self.name_of.get(a)) if self.name_of.get(a) else None
            if t is None or not t.shape:
                args.append(e)
                continue
            full = (1,) * (rank - len(t.shape)) + tuple(t.shape)
            if is_blocked(lout) and t.kind == "const":
                args.append(relax.const(
                    block_activation(a.value.numpy().reshape(full), lout[4]), t.dtype))
            elif is_blocked(lout) and t.shape != out.shape:
                e = self.logical(n, e)
                if len(t.shape) != rank:
                    e = self.builder_.emit(relax.op.reshape(e, full))
                args.append(self.blocked_operand(e, full, lout[4]))
            elif t.kind == "const":
                arr = np.transpose(a.value.numpy().reshape(full), lout)
                args.append(relax.const(np.ascontiguousarray(arr), t.dtype))
            elif t.shape == out.shape:
                args.append(self.convert(e, n, self.lay(n), lout))
            else:
                e = self.logical(n, e)
                if len(t.shape) != rank:
                    e = self.builder_.emit(relax.op.reshape(e, full))
                if moves_data(lout, full):
                    e = self.builder_.emit(relax.op.permute_dims(e, list(lout)))
                elif lout != identity(rank):
                    e = self.builder_.emit(relax.op.reshape(e, phys_shape(full, lout)))
                args.append(e)
        return relax.Call(value.op, args, value.attrs, value.ty_args)


@tvm.transform.module_pass(opt_level=0, name="FluidMLLayout")
class FluidMLLayout:
    """Plan (and by default apply) FluidML layouts on every Relax function of a module.

    Parameters
    ----------
    target
        The target the costs are for (``None``: ``Target.current()``, or analytic costs).
    options
        :class:`fluidml_tvm.options.Options`; ``cost`` selects the cost model (analytic /
        measured / learned, see :func:`.layout_measure.make_model`).
    apply
        Rewrite the IR (True) or only record the plans and reasons (False).
    model
        A cost model object overriding ``options.cost`` (tests, tutorials).
    explicit_transforms
        Allow plans that insert transposes around kernels that cannot absorb a layout (True:
        FluidML's full search). False keeps only layouts that kernels absorb, so the rewrite
        removes transpose kernels and never adds one (what the ``fluidml`` pipeline runs).
    """

    def __init__(self, target=None, options=None, apply: bool = True, model=None,
                 explicit_transforms: bool = True):
        self.target, self.options, self.apply, self.model = target, options, apply, model
        self.explicit_transforms = explicit_transforms
        self.plans: dict = {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from .layout_measure import make_model

        penalty = 0.0 if self.explicit_transforms else 10.0  # seconds: never worth paying
        # a plan that is only reported uses cached measurements and spends no compile time
        model = self.model or make_model(self.target, self.options, penalty, measure=self.apply)
        out = mod
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or (func.attrs and (
                    "Codegen" in func.attrs or "Primitive" in func.attrs)):
                continue
            g, exprs = build_graph(func)
            cands = candidates(g, matmul_transposes=self.explicit_transforms,
                               conv_layouts=getattr(self.options, "layout_conv", True),
                               conv_block=self._conv_block())
            if hasattr(model, "prepare"):
                model.prepare(g, cands)
            plan = plan_layouts(g, model, cands=cands)
            if getattr(model, "conversion_penalty", 0.0):  # also record the unrestricted plan
                penalty = model.conversion_penalty
                object.__setattr__(model, "conversion_penalty", 0.0)
                free = plan_layouts(g, model, plan.chains)
                object.__setattr__(model, "conversion_penalty", penalty)
                extra = sorted(set(free.layouts.items()) - set(plan.layouts.items()))
                plan.notes.append(
                    f"unrestricted plan (explicit transforms allowed, not applied): "
                    f"{len(free.layouts)} non-default tensors, modelled {free.cost * 1e6:.1f}us; "
                    + ("differs on: " + ", ".join(f"{t}{list(lay)}" for t, lay in extra[:12])
                       if extra else "same layouts"))
            if not self.apply:
                plan.notes.append("analysis only: the IR is left in the default layouts")
            stored = self._gain_notes(g, plan, model)
            self.plans[gv.name_hint] = plan
            keep = True
            if (self.apply and plan.layouts and stored is not None
                    and getattr(self.options, "layout_verify", False)
                    and not layout_gain.keeps(stored)):
                keep = False
                plan.notes.append(
                    f"NOT APPLIED (fluidml.layout_verify): measured end to end on/off "
                    f"{stored['ratio']:.3f} (rounds {stored['q25']:.3f}-{stored['q75']:.3f}; "
                    f"{layout_gain.keep_rule()}); the function keeps the default layouts")
            log.info("layout plan of %s:\n%s", gv.name_hint, plan_report(plan))
            if self.apply and plan.layouts and keep:
                rw = _Rewriter(out, g, exprs, plan.layouts)
                new = rw.visit_expr(func)
                rw.builder_.update_func(gv, new)
                out = rw.builder_.get()
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        # the report travels with the module: capture it after this pass (compile --report)
        return out.with_attr("fluidml.layout_report", report(self))


    def _conv_block(self) -> int:
        """The ``NCHW[b]c`` block of conv candidates: the target's fp32 vector lanes (0: none;
        ``fluidml.layout_blocked=0``, the default, or a non-CPU target)."""
        from ..options import Options

        opts = self.options if self.options is not None else Options()
        if not opts.layout_conv or not opts.layout_blocked:
            return 0
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None:
            return 0
        if not isinstance(target, tvm.target.Target):
            target = tvm.target.Target(target)
        if target.kind.name != "llvm":
            return 0
        from ..schedules.target_info import cpu_info

        lanes = cpu_info(target).lanes(32)
        return lanes if lanes >= 4 else 0

    def _gain_notes(self, g, plan, model) -> dict | None:
        """Expected (modelled) and measured (end to end, cached) gain of the plan; returns the
        stored end-to-end measurement of the plan, if any."""
        pid = layout_gain.plan_id(g, plan.layouts)
        plan.notes.append(f"plan id {pid}; " + layout_gain.expected_line(plan))
        db = getattr(model, "db", None)
        if db is None and self.options is not None and self.options.cache_dir:
            from ..costdb import CostDB

            db = CostDB(self.options.cache_dir)
        target = self.target or tvm.target.Target.current(allow_none=True)
        if not self.apply:
            plan.notes.append("measured gain: not applicable (plan reported, not applied)")
        elif db is not None and target is not None:
            stored = layout_gain.lookup(db, layout_gain.target_key(target), pid) \
                if plan.layouts else None
            plan.notes.append(layout_gain.stored_line(stored, plan.layouts))
            return stored
        return None


def report(layout_pass: FluidMLLayout) -> str:
    """Chosen layouts with reasons, per function (for ``fluidml-tvm compile --report``)."""
    parts = []
    for name, plan in layout_pass.plans.items():
        parts.append(f"[layout] function {name}: {len(plan.layouts)} non-default tensors\n"
                     + plan_report(plan))
    return "\n".join(parts)


def explain(mod: tvm.IRModule, target=None, options=None, model=None) -> str:
    """The layout report of ``mod`` (Relax, before legalization) without changing it."""
    p = FluidMLLayout(target, options, apply=False, model=model)
    if target is not None:
        with tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target:
            p(mod)
    else:
        p(mod)
    return report(p)

