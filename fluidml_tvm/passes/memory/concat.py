"""In-place concatenation: a concat's inputs are written straight into their slabs of its output.

A concatenation along an axis whose leading dimensions are all 1 (channels of an NCHW tensor with
batch 1: SqueezeNet's fire modules, GoogLeNet's inception blocks, FPN heads) copies each input into
one contiguous slab of the output. When every input is a fresh kernel output of this function,
the output is allocated where the first input was, each input becomes a view of its slab
(``R.memory.view`` at the slab's byte offset, then ``R.memory.ensure_zero_offset``), so the kernel
that computed it writes it in place, and the copy kernel is dropped. SqueezeNet's four fire-module
concats were 9% of its run time.

Taken only when, for the kernel and each input:

* the kernel is a stand-alone concatenation (named ``concatenate*`` by legalization and fusion,
  nothing fused into it): its parameters are the inputs and one output of one dtype, equal in
  every dimension but the axis, whose extents add up; every dimension before the axis is 1; its
  TensorIR only stores into the output values loaded from the inputs (selected by conditions);
* every slab starts at a multiple of 64 bytes (kernels assume aligned data);
* each input is an ``R.builtin.alloc_tensor`` of this function that the planner places (the
  function's lifetimes: a static shape, the global scope of device 0, not returned nor passed to
  anything but kernels), appears once in the concat and in no other concat taken, is not the
  output of a concat taken before (chained concats, DenseNet's), and is first used by a kernel
  call that takes it as its last argument (its writer in destination-passing style), before the
  concat;
* the output is such an ``alloc_tensor`` too, first used by the concat.

and the function has no effects its variables do not show (the conditions under which
:mod:`.order` may reorder it: no in-place kernel, no extern call), so nothing writes a slab after
the concat would have copied it. Kernels that write into a view are such effects in turn: the
memory stage keeps the binding order of a function where a concat was taken. Kill switch:
``fluidml.memory_concat=0``.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax

from .lifetimes import BUILTIN_ALLOC
from .order import why_not_reorderable

CONCAT_NAME = re.compile(r"^concatenate\d*$")
ALIGN = 64


def _dims(buf) -> list[int] | None:
    try:
        return [int(d) for d in buf.shape]
    except (TypeError, ValueError):
        return None


def slab_offsets(prim: tvm.tirx.PrimFunc) -> tuple[list[int] | None, str]:
    """Byte offsets of each input's slab in the output of a concatenation kernel, or None and
    why not (see the module docstring)."""
    bufs = list(prim.params)  # TVM 0.27: a PrimFunc's parameters are its buffers
    if len(bufs) < 3 or not all(hasattr(b, "shape") and hasattr(b, "dtype") for b in bufs):
        return None, "not (inputs, one output) buffers"
    ins, out = bufs[:-1], bufs[-1]
    dtypes = {str(b.dtype) for b in bufs}
    if len(dtypes) != 1:
        return None, "dtypes differ"
    shapes = [_dims(b) for b in bufs]
    if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return None, "symbolic or differing ranks"
    oshape = shapes[-1]
    axes = [a for a in range(len(oshape)) if any(s[a] != oshape[a] for s in shapes[:-1])]
    if len(axes) > 1:
        return None, "inputs differ in more than one dimension"
    axis = axes[0] if axes else next((a for a, d in enumerate(oshape) if d != 1), 0)
    if sum(s[axis] for s in shapes[:-1]) != oshape[axis]:
        return None, "input extents do not add up to the output's"
    if any(d != 1 for d in oshape[:axis]):
        return None, f"dimensions before axis {axis} are not 1: slabs are not contiguous"
    item = tvm.DataType(str(out.dtype)).bits // 8
    inner = item
    for d in oshape[axis + 1:]:
        inner *= d
    offsets, at = [], 0
    for s in shapes[:-1]:
        offsets.append(at)
        at += s[axis] * inner
    if any(o % ALIGN for o in offsets):
        return None, f"a slab offset is not a multiple of {ALIGN} bytes"
    if not _copies_only(prim, ins, out):
        return None, "the kernel computes more than a copy"
    return offsets, ""


def _copies_only(prim, ins, out) -> bool:
    """Every store writes ``out`` a value that is a load of an input, or a choice (if_then_else,
    select) between such values."""
    # TVM 0.27: a store's buffer and a load's source are the parameter objects themselves
    ok = {"flag": True, "stores": 0}

    def value_ok(e) -> bool:
        if isinstance(e, tvm.ir.expr.TensorLoad):
            return any(e.source.same_as(b) for b in ins)
        if isinstance(e, tvm.tirx.Select):
            return value_ok(e.true_value) and value_ok(e.false_value)
        if isinstance(e, tvm.ir.expr.Call) and str(e.op.name).endswith("if_then_else"):
            return value_ok(e.args[1]) and value_ok(e.args[2])
        return False

    def visit(node):
        if isinstance(node, tvm.tirx.BufferStore):
            ok["stores"] += 1
            if not node.buffer.same_as(out) or not value_ok(node.value):
                ok["flag"] = False

    _walk(prim.body, visit)
    return ok["flag"] and ok["stores"] > 0


def _walk(obj, visit, seen=None):
    """Visit every node of a TensorIR statement (TVM 0.27's tirx has no stmt_functor)."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return
    visit(obj)
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    if info is not None:
        skip = {"span", "annotations", "ty"}
        for f in info.fields:
            if f.name not in skip:
                _walk(getattr(obj, f.name), visit)
    elif hasattr(obj, "__iter__") and not isinstance(obj, dict):
        for ch in obj:
            _walk(ch, visit)


def in_place_concats(mod: tvm.IRModule, func: relax.Function,
                     life) -> tuple[relax.Function | None, list[str]]:
    """``func`` with the concats it can take written in place (None: none taken), and a line per
    concat kernel saying what was done and why. ``life``: ``func``'s lifetimes
    (:func:`.lifetimes.collect_lifetimes`), for which tensors the planner may place."""
    if len(func.body.blocks) != 1 or isinstance(func.body.blocks[0], relax.DataflowBlock):
        return None, []
    why = why_not_reorderable(mod, func)
    if why is not None:
        # effects the variables do not show (an in-place kernel, an extern call) could write a
        # slab after the concat read it
        return None, [f"concats copied: {why}"]
    bindings = list(func.body.blocks[0].bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    root: dict = {}  # Var -> the alloc var it renames (lv = alloc)
    for b in bindings:
        if isinstance(b.value, relax.Call) and b.value.op.same_as(BUILTIN_ALLOC):
            root[b.var] = b.var
        elif isinstance(b.value, relax.Var) and b.value in root:
            root[b.var] = root[b.value]
    uses: dict = {}  # alloc var -> binding indices that mention it (through renamings)
    for i, b in enumerate(bindings):
        if isinstance(b.value, relax.Var) and b.value in root:
            continue  # a renaming is no use
        for v in relax.analysis.free_vars(b.value):
            if v in root:
                uses.setdefault(root[v], []).append(i)
    tensor_of = {t.var: t for t in life.tensors if t.kind == "builtin"}

    def plannable(a) -> str:
        """Why the planner would not place ``a`` (its own criteria, :mod:`.plan`); "" if it
        would."""
        t = tensor_of.get(a)
        if t is None:
            return "not an alloc_tensor of this function"
        if t.escaped:
            return t.escaped
        if t.nbytes is None:
            return "symbolic shape"
        if t.scope != "global":
            return f"storage scope {t.scope}"
        if t.device_index != 0:
            return f"runtime device index {t.device_index}"
        return ""

    notes, groups, taken, outs = [], [], set(), set()
    for j, b in enumerate(bindings):
        call = b.value
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar)
                and CONCAT_NAME.match(call.op.name_hint)):
            continue
        prim = mod[call.op]
        if not isinstance(prim, tvm.tirx.PrimFunc):
            continue
        name = call.op.name_hint
        offsets, why = slab_offsets(prim)
        if offsets is None:
            notes.append(f"{name}: copied - {why}")
            continue
        args = list(call.args)
        if not all(isinstance(a, relax.Var) and a in root for a in args):
            notes.append(f"{name}: copied - an input is not a kernel output of this function "
                         f"(a parameter or constant)")
            continue
        out, ins = root[args[-1]], [root[a] for a in args[:-1]]
        why = plannable(out) or (
            "" if uses.get(out, [None])[0] == j else "its output is used before it")
        for a in ins:
            if why:
                break
            why = plannable(a)
            if why:
                why = f"input {a.name}: {why}"
            elif a in taken or ins.count(a) > 1:
                why = f"input {a.name} is in another slab already"
            elif a in outs:  # DenseNet: one concat's output is the next one's first input
                why = f"input {a.name} is an in-place concat's output"
            else:
                k = uses.get(a, [None])[0]
                w = bindings[k].value if k is not None else None
                if not (k is not None and k < j and isinstance(w, relax.Call)
                        and isinstance(w.op, tvm.ir.GlobalVar)
                        and isinstance(mod[w.op], tvm.tirx.PrimFunc)
                        and isinstance(w.args[-1], relax.Var)
                        and root.get(w.args[-1]) is a
                        and sum(root.get(x) is a for x in w.args if isinstance(x, relax.Var))
                        == 1):
                    why = f"input {a.name} is not written by one kernel as its output"
        if why:
            notes.append(f"{name}: copied - {why}")
            continue
        taken.update(ins)
        outs.add(out)
        groups.append((j, out, ins, offsets))
        notes.append(f"{name}: in place - {len(ins)} inputs written into their slabs of "
                     f"{out.name} (byte offsets {offsets}), the copy dropped")
    if not groups:
        return None, notes
    drop = {j for j, _, _, _ in groups}
    moved = {index[out] for _, out, _, _ in groups}
    first = {}  # binding index of an input alloc -> (output var, offset) it becomes a view of
    head = {}  # binding index -> output alloc binding emitted right before it
    for _, out, ins, offsets in groups:
        at = min(index[a] for a in ins)
        head[at] = bindings[index[out]]
        for a, off in zip(ins, offsets):
            first[index[a]] = (out, off)
    new = []
    for i, b in enumerate(bindings):
        if i in drop or i in moved:
            continue
        if i in head:
            new.append(head[i])
        if i in first:
            out, off = first[i]
            call = b.value
            shape, dtype = call.args[0], call.args[1]
            view = relax.op.memory.view(out, shape, dtype, off)
            if off == 0:
                new.append(relax.VarBinding(b.var, view))
            else:
                raw = relax.Var(b.var.name + "_slab", b.var.ty)
                new.append(relax.VarBinding(raw, view))
                new.append(relax.VarBinding(b.var, relax.op.memory.ensure_zero_offset(raw)))
            continue
        new.append(b)
    body = relax.SeqExpr([relax.BindingBlock(new)], func.body.body)
    f = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    return f, notes
