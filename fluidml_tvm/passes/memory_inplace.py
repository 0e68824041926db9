"""In-place reuse: which kernel outputs may take the bytes of an input that dies at the call.

Decided from the kernel's TensorIR (after scheduling, if the schedule stage ran), see
:func:`inplace_safe`; pairs are found on the Relax side by :func:`inplace_pairs`. The independent
verifier (:mod:`memory_verify`) re-checks every handover with its own analysis.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

logger = logging.getLogger("fluidml_tvm.memory")


def _identity_point(region, iter_vars) -> bool:
    """True if a BufferRegion is exactly the single point ``[v0, v1, ...]`` of the block vars."""
    if len(region.region) != len(iter_vars):
        return False
    for rng, iv in zip(region.region, iter_vars):
        ext = rng.extent
        if not (isinstance(ext, tvm.tirx.IntImm) and int(ext.value) == 1):
            return False
        if not rng.min.same_as(iv.var):
            return False
    return True


def _stmt_children(stmt):
    """Child statements of the statement kinds a scheduled PrimFunc uses; None for others."""
    t = tvm.tirx
    if isinstance(stmt, t.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, t.For):
        return [stmt.body]
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return [stmt.block]
    if isinstance(stmt, t.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    if isinstance(stmt, (t.LetStmt, t.AttrStmt, t.AllocBuffer, t.DeclBuffer)):
        return [stmt.body] if getattr(stmt, "body", None) is not None else []
    if isinstance(stmt, (t.BufferStore, t.Evaluate, t.Bind)):
        return []
    return None


def inplace_safe(prim: tvm.tirx.PrimFunc, in_pos: int, out_pos: int) -> str | None:
    """Why output parameter ``out_pos`` may NOT share memory with input ``in_pos`` (None: it may).

    Safe when the two buffers have the same static shape and dtype and every block that touches
    either is data-parallel, reads the input only at its own iteration point ``in[v]``, writes the
    output only at ``out[v]`` (a single store), and no other block reads the input or touches the
    output: each block instance then reads ``in[v]`` before it overwrites that same element, and
    no one reads it again. Block access regions are TVM's own (a superset of the real accesses).
    """
    try:
        din, dout = prim.params[in_pos], prim.params[out_pos]
        shape_in, shape_out = list(din.shape), list(dout.shape)
    except (IndexError, AttributeError):
        return "parameter is not a buffer"
    if str(din.dtype) != str(dout.dtype) or len(shape_in) != len(shape_out):
        return "dtype or rank differs"
    for a, b in zip(shape_in, shape_out):
        static = isinstance(a, tvm.tirx.IntImm) and isinstance(b, tvm.tirx.IntImm)
        if not static or int(a.value) != int(b.value):
            return "shapes differ or are symbolic"
    stack, n_readers, root = [prim.body], 0, True
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, tvm.s_tir.SBlock):
            reads = [r for r in stmt.reads if r.source.same_as(din)]
            writes = [w for w in stmt.writes if w.source.same_as(dout)]
            touches_in_w = any(w.source.same_as(din) for w in stmt.writes)
            touches_out_r = any(r.source.same_as(dout) for r in stmt.reads)
            if touches_in_w or touches_out_r:
                return f"block {stmt.name_hint} writes the input or reads the output"
            if reads or writes:
                if root and not stmt.iter_vars:
                    return "root block accesses the buffers"
                if not (reads and writes):
                    return f"block {stmt.name_hint} reads the input without writing the output"
                if stmt.init is not None or any(iv.iter_type != 0 for iv in stmt.iter_vars):
                    return f"block {stmt.name_hint} is a reduction"
                if not all(_identity_point(r, stmt.iter_vars) for r in reads + writes):
                    return f"block {stmt.name_hint} accesses another element"
                body = stmt.body
                if not (isinstance(body, tvm.tirx.BufferStore) and body.buffer.same_as(dout)):
                    return f"block {stmt.name_hint} body is not a single store to the output"
                n_readers += 1
            root = False
            children = [stmt.body] + ([stmt.init] if stmt.init is not None else [])
        else:
            children = _stmt_children(stmt)
            if children is None:
                return f"unsupported statement {type(stmt).__name__}"
        stack.extend(children)
    return None if n_readers else "no block reads the input"


def inplace_pairs(mod: tvm.IRModule, life, plannable: set) -> list[tuple[int, int, str]]:
    """(input tensor, output tensor, reason) pairs where the output may take the input's bytes.

    The input must die at the kernel call that first writes the output, appear in exactly one
    argument of that call, and the kernel must pass :func:`inplace_safe` for that pair.
    """
    first_use: dict[int, int] = {}
    for j, used in enumerate(life.uses):
        for t in used:
            if j > life.tensors[t].index:
                first_use.setdefault(t, j)
    pairs, taken = [], set()
    for j, b in enumerate(life.bindings):
        call = b.value
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar)):
            continue
        prim = mod[call.op]
        if not isinstance(prim, tvm.tirx.PrimFunc):
            continue
        arg_tokens = []
        for a in call.args:
            ids = set()
            for v in relax.analysis.free_vars(a):
                ids |= _alias_ids(life, v)
            arg_tokens.append(ids)
        outs = [
            k
            for k, ids in enumerate(arg_tokens)
            if len(ids) == 1
            and first_use.get(next(iter(ids))) == j
            and next(iter(ids)) in plannable
        ]
        for ko in outs:
            o = next(iter(arg_tokens[ko]))
            for ki, ids in enumerate(arg_tokens):
                if ki == ko or len(ids) != 1:
                    continue
                i = next(iter(ids))
                if i in taken or i == o or i not in plannable or life.tensors[i].end != j:
                    continue
                if sum(i in x for x in arg_tokens) != 1:
                    continue
                if life.tensors[i].nbytes != life.tensors[o].nbytes:
                    continue
                why = inplace_safe(prim, ki, ko)
                if why is None:
                    taken.add(i)
                    pairs.append(
                        (
                            i,
                            o,
                            f"{call.op.name_hint} writes {life.tensors[o].var.name} "
                            f"over {life.tensors[i].var.name}",
                        )
                    )
                    break
                logger.debug(
                    "no in-place for %s over %s in %s: %s",
                    life.tensors[o].var.name,
                    life.tensors[i].var.name,
                    call.op.name_hint,
                    why,
                )
    return pairs


def _alias_ids(life, var) -> set:
    # Tensors a variable may hold: recomputed from the recorded uses of its defining binding.
    return life.var_tensors.get(var, set())
