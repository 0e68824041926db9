"""The kernels a layout variant is timed as: the PrimFunc the rewrite emits for a matmul or a
permute in given layouts (the conv ones are :func:`.conv.conv_variant`), scheduled by the
FluidML schedules and timed on this host (:func:`schedule_and_time`), and the variants' cache
keys. :mod:`.measure` caches and budgets them."""

from __future__ import annotations

import tvm
from tvm import te

from .layouts import compose, identity, inverse, moves_data, phys_shape


def matmul_variant(a_shape, b_shape, out_shape, la, lb, lo, dtype="float32"):
    """The PrimFunc the rewrite emits for a matmul with layouts ``la``, ``lb``, ``lo``."""
    from .kernels import permuted_matmul

    a = te.placeholder(phys_shape(a_shape, la), dtype, "A")
    b = te.placeholder(phys_shape(b_shape, lb), dtype, "B")
    c = permuted_matmul(a, b, la, lb, lo, a_shape, b_shape, out_shape, dtype)
    return te.create_prim_func([a, b, c])


def transpose_variant(shape, perm, dtype="float32"):
    """A transpose kernel: out dim p = in dim ``perm[p]``."""
    x = te.placeholder(tuple(shape), dtype, "X")
    out = te.compute(phys_shape(shape, perm),
                     lambda *i: x[tuple(i[inverse(perm)[d]] for d in range(len(perm)))],
                     name="T_transpose")
    return te.create_prim_func([x, out])


def _with_constants(func, consts):
    """A module where a Relax caller passes constants for params ``consts`` of ``func``, so the
    schedules treat them as the model's weights (packed offline, as in the real pipeline)."""
    import numpy as np
    from tvm import relax

    bb = relax.BlockBuilder()
    gv = bb.add_func(func, "k")
    ps = func.params
    ins = [relax.Var(f"p{i}", relax.TensorType([int(d) for d in p.ty.shape], str(p.ty.dtype)))
           for i, p in enumerate(ps[:-1]) if i not in consts]
    args, it = [], iter(ins)
    for i, p in enumerate(ps[:-1]):
        shape = [int(d) for d in p.ty.shape]
        args.append(relax.const(np.zeros(shape, str(p.ty.dtype))) if i in consts else next(it))
    out = ps[-1].ty
    with bb.function("main", ins):
        res = bb.emit(relax.call_tir(gv, args, relax.TensorType(
            [int(d) for d in out.shape], str(out.dtype))))
        bb.emit_func_output(res)
    return bb.get()


def reshape_transpose_variant(src, mid, perm, after, dtype="float32"):
    """``reshape(src -> mid)``, transpose by ``perm``, then ``reshape(-> after)`` if given: the
    kernel FuseOps makes of a permute and its neighbouring reshape."""
    from tvm import topi

    x = te.placeholder(tuple(src), dtype, "X")
    y = topi.reshape(x, tuple(mid)) if tuple(mid) != tuple(src) else x
    y = topi.transpose(y, list(perm))
    if after is not None:
        y = topi.reshape(y, tuple(after))
    return te.create_prim_func([x, y])


def schedule_and_time(funcs: list, target, options, timings: bool = False) -> list:
    """Seconds per call of each PrimFunc with the FluidML schedules (None where it failed);
    ``timings``: :class:`~fluidml_tvm.schedules.measure.Timing` objects (with the machine load).

    Items are PrimFuncs or ``(PrimFunc, constant param indices)``.
    """
    import dataclasses

    from ... import tuning
    from ...schedules import FluidMLSchedule
    from ...schedules.measure import measure_funcs

    # each variant gets the schedules' own choice among a few measured tiles (cached), so the
    # default and the permuted variants are compared at their best, as the pipeline runs them;
    # within a bounded tune budget the schedules' cached choice, else their analytic one (a
    # variant then costs one build and its timing: the margin absorbs the difference)
    options = dataclasses.replace(options, tune_trials=min(options.tune_trials, 3))
    if not tuning.for_options(options).unbounded:
        options = dataclasses.replace(options, cost="learned")
    done = []
    for item in funcs:
        f, consts = item if isinstance(item, tuple) else (item, ())
        if consts:
            mod = _with_constants(f, set(consts))
        else:
            mod = tvm.IRModule({"k": f.with_attr("global_symbol", "k")})
        with target:
            mod = FluidMLSchedule(target, options)(mod)
        prims = [g for g, v in mod.functions_items() if isinstance(v, tvm.tirx.PrimFunc)]
        done.append(mod[prims[0]].with_attr("global_symbol", "main"))
    found = measure_funcs(done, target, min_repeat_ms=10, repeat=3, cold=True)
    return found if timings else [t.seconds for t in found]


# Bumped when a schedule rule changes the kernels a key times, or how they are timed, so older
# cached timings are not reused: 2 = tiled transposes and the packed-order copy of K-innermost B
# (2026-11-26); 3 = timed cold, the output flushed before each call (measure_funcs(cold=True),
# 2026-12-07; conv keys carry it from 3 on).
KERNELS_VERSION = 3


def variant_key(kind, *parts) -> str:
    """A layout variant's cache key: its kind and shape/layout parts."""
    key = kind + ":" + "|".join(",".join(map(str, p)) for p in parts)
    if kind in ("transpose", "rtranspose", "transposer"):
        key += f"|{KERNELS_VERSION}"  # a numeric part: layout_learned.features parses keys
    return key


def matmul_key(ts, o, la, lb, lo) -> str:
    """A matmul variant: shapes, layouts and which operands are constants (packed offline)."""
    consts = tuple(j for j, t in enumerate(ts) if t.kind == "const")
    return variant_key("matmul", ts[0].shape, ts[1].shape, o.shape, la, lb, lo, consts,
                       (3, KERNELS_VERSION))


def permute_variant(g, i, lx, lo):
    """Key and builder of permute node ``i``'s kernel for layouts ``lx -> lo``, fused with
    the reshape that feeds it or follows it, as FuseOps will fuse them (None: an alias)."""
    n = g.nodes[i]
    x = g.tensors[n.inputs[0]]
    q = compose(inverse(lx), compose(n.attrs["axes"], lo))
    shape = phys_shape(x.shape, lx)
    if not moves_data(q, shape):
        return None, None
    dt = x.dtype
    p = g.producer.get(n.inputs[0])
    if p is not None and g.nodes[p].op == "relax.reshape" and lx == identity(len(lx)):
        src = g.tensors[g.nodes[p].inputs[0]].shape if g.nodes[p].inputs else None
        if src is not None:
            return variant_key("rtranspose", src, shape, q), (
                lambda: reshape_transpose_variant(src, shape, q, None, dt))
    cons = g.consumers.get(n.output, [])
    if len(cons) == 1 and g.nodes[cons[0]].op == "relax.reshape" and lo == identity(len(lo)):
        after = g.tensors[g.nodes[cons[0]].output].shape
        if after is not None:
            return variant_key("transposer", shape, q, after), (
                lambda: reshape_transpose_variant(shape, shape, q, after, dt))
    return variant_key("transpose", shape, q), lambda: transpose_variant(shape, q, dt)
