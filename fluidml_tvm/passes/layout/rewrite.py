"""The IR in the chosen layouts: :func:`apply_plan` realizes a layout plan on a Relax function.

It runs on high-level Relax (``R.matmul``, ``R.permute_dims``, elementwise ops, ...) before
LegalizeOps/FoldConstant:

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

Graph inputs, outputs and dynamic-shape tensors keep the default layout. The plan comes from
:mod:`.stage` (the front door), which decides whether it is applied.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .conv import block_activation, depthwise_weight, is_depthwise
from .cost import axis_inputs, axis_ok, op_kind, pool_ok
from .kernels import permuted_matmul
from .layouts import compose, default_of, identity, inverse, is_blocked, moves_data, phys_shape

log = logging.getLogger("fluidml_tvm.layout")


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
            from .layouts import from_blocked, to_blocked

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
        elif kind == "axis" and self.g.nodes[i].op == "relax.mean":
            new, produced = self.mean(i, value)
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
        from .kernels import permuted_conv2d
        from .layouts import CONV_LAYOUTS

        n = self.g.nodes[i]
        xname, x = self.arg(value.args[0])
        lin = self.lay(xname)
        dw = is_depthwise(self.g, i)
        if is_blocked(lout) and not dw:
            return self.blocked_conv(i, value, xname, x, lin, lout), lout
        if lin not in CONV_LAYOUTS:
            x, lin = self.logical(xname, x), identity(4)
        lo = lout if lout in CONV_LAYOUTS else identity(4)
        if lin == identity(4) and lo == identity(4):
            return relax.Call(value.op, [x, self.visit_expr(value.args[1])], value.attrs,
                              value.ty_args), lo
        c = n.attrs["conv"]
        out = self.g.tensors[n.output]
        if dw:  # the weight stored as [KH, KW, C] (a new constant)
            from .kernels import permuted_depthwise

            w = value.args[1]
            if not isinstance(w, tvm.ir.GenericConst):
                raise ValueError(f"conv2d {n.output}: weight is not a constant")
            arr = w.value.numpy()
            w = relax.const(depthwise_weight(arr), str(arr.dtype))
            fn = lambda d, k: permuted_depthwise(  # noqa: E731
                d, k, lin, lo, out.shape, c["strides"], c["padding"], c["dilation"], out.dtype)
            return self.builder_.call_te(fn, x, w, primfunc_name_hint="depthwise_layout"), lo
        fn = lambda d, w: permuted_conv2d(  # noqa: E731
            d, w, lin, lo, out.shape, c["strides"], c["padding"], c["dilation"], out.dtype)
        call = self.builder_.call_te(fn, x, self.visit_expr(value.args[1]),
                                     primfunc_name_hint="conv2d_layout")
        return call, lo

    def blocked_conv(self, i, value, xname, x, lin, lout):
        """conv2d writing ``NCHW[b]c`` (reading NCHW or a blocked input), its weight stored
        pre-blocked (a new constant) for :func:`.layout_conv.blocked_conv2d`."""
        from .conv import block_weight
        from .kernels import blocked_conv2d

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
        from .layouts import to_blocked

        n_, c, h, w = full
        if c == 1:
            return self.builder_.emit(relax.op.reshape(e, (n_, 1, h, w, 1)))
        if n_ * h * w == 1:  # [1, C, 1, 1] (a bias): the blocked order is the same bytes
            return self.builder_.emit(relax.op.reshape(e, (1, c // b, 1, 1, b)))
        return self.builder_.emit(relax.op.layout_transform(e, to_blocked(b)))

    def pool(self, value, lout):
        """A pool on the tensor held in ``lout`` (NCHW or NHWC), through its layout attrs."""
        from .layouts import layout_name

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

    def mean(self, i, value):
        """A mean keeping dims computed on its input as held (axes remapped); returns the call
        and the layout it writes (the input's: a global pool's result is then a view)."""
        n = self.g.nodes[i]
        xname, x = self.arg(value.args[0])
        lin = self.lay(xname)
        if is_blocked(lin):
            x, lin = self.logical(xname, x), identity(4)
        pos = inverse(lin)
        axes = sorted(pos[a] for a in n.attrs["axis_list"])
        return relax.op.mean(x, axis=axes, keepdims=True), lin

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


def apply_plan(mod: tvm.IRModule, gv, func, g, exprs, layouts: dict) -> tvm.IRModule:
    """``mod`` with Relax function ``gv`` (``func``, graph ``g``) rewritten to ``layouts``."""
    rw = _Rewriter(mod, g, exprs, layouts)
    new = rw.visit_expr(func)
    rw.builder_.update_func(gv, new)
    return rw.builder_.get()
