"""In-place reuse: which kernel outputs may take the bytes of an input that dies at the call.

Decided from the kernel's TensorIR (after scheduling, if the schedule stage ran), see
:func:`inplace_safe`; pairs are found on the Relax side by :func:`inplace_pairs`. The independent
verifier (:mod:`memory_verify`) re-checks every handover with its own analysis.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import relax

logger = logging.getLogger("fluidml_tvm.memory")


def _at(region, point, same) -> bool:
    """True if a BufferRegion is exactly the single point ``point`` (compared with ``same``)."""
    if len(region.region) != len(point):
        return False
    return all(isinstance(rng.extent, tvm.tirx.IntImm) and int(rng.extent.value) == 1
               and same(rng.min, p) for rng, p in zip(region.region, point))


def _identity_point(region, iter_vars) -> bool:
    """True if a BufferRegion is exactly the single point ``[v0, v1, ...]`` of the block vars."""
    return _at(region, [iv.var for iv in iter_vars], lambda a, b: a.same_as(b))


def _one_point(regions, blk, shape: list[int]) -> bool:
    """Every region is the same single point ``g(v)`` of the block's iteration ``v``, and ``g``
    is one-to-one from the block's domain onto the buffer's elements: the identity ``[v0, v1,
    ..]``, or rows x columns fused into one axis (``[.., p // X, p % X]``, the 1x1 position
    vectors), proven bijective by TVM's iter-map analysis, over a domain as large as the buffer.
    Then each instance reads and writes only its own element, and no other instance touches it.
    """
    if all(_identity_point(r, blk.iter_vars) for r in regions):
        return True
    first = [rng.min for rng in regions[0].region]
    if not all(_at(r, first, tvm_ffi.structural_equal) for r in regions):
        return False
    dom = {}
    size = 1
    for iv in blk.iter_vars:
        ext = iv.dom.extent
        if not isinstance(ext, tvm.tirx.IntImm):
            return False
        dom[iv.var] = iv.dom
        size *= int(ext.value)
    total = 1
    for d in shape:
        total *= d
    if size != total:
        return False
    from tvm.sym import iter_affine_map

    found = iter_affine_map.detect_iter_map(first, dom, check_level="bijective")
    return len(found.indices) == len(first)


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


def _static_dims(buf) -> list[int] | None:
    dims = []
    for d in buf.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return dims


def inplace_safe(prim: tvm.tirx.PrimFunc, in_pos: int, out_pos: int) -> str | None:
    """Why output parameter ``out_pos`` may NOT share memory with input ``in_pos`` (None: it may).

    Safe when the input and output have the same static shape and dtype, and the kernel is
    pointwise between them: every block that touches the input, the output or a buffer the kernel
    allocates and computes from the input is data-parallel (no init) and accesses those buffers
    only at its own iteration point ``v`` (all of the output's shape); exactly one block writes
    the output, no block reads it or writes the input, and every block that reads the input feeds
    that writer through the kernel's own buffers (or is the writer). Then ``in[v]`` is read, in
    any valid schedule, before ``out[v]`` (the only element stored over it) is written. Block
    access regions are TVM's own (a superset of the real accesses).
    """
    try:
        din, dout = prim.params[in_pos], prim.params[out_pos]
    except (IndexError, AttributeError):
        return "parameter is not a buffer"
    try:
        shape = _static_dims(dout)
        if str(din.dtype) != str(dout.dtype) or shape is None or _static_dims(din) != shape:
            return "dtype or shape differs, or is symbolic"
    except AttributeError:
        return "parameter is not a buffer"
    blocks, internal, stack = [], [], [prim.body]
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, tvm.s_tir.SBlock):
            internal += list(stmt.alloc_buffers)
            blocks.append(stmt)
            children = [stmt.body] + ([stmt.init] if stmt.init is not None else [])
        else:
            children = _stmt_children(stmt)
            if children is None:
                return f"unsupported statement {type(stmt).__name__}"
        stack.extend(children)

    # The kernel's own buffers that carry values of the input (computed from it); the others
    # (e.g. per-channel scales computed from weights) are read like any other parameter.
    tainted = [din]
    changed = True
    while changed:
        changed = False
        for blk in blocks:
            if any(any(r.source.same_as(t) for t in tainted) for r in blk.reads):
                for w in blk.writes:
                    own = any(w.source.same_as(b) for b in internal)
                    if own and not any(w.source.same_as(t) for t in tainted):
                        tainted.append(w.source)
                        changed = True

    def tracked(buf) -> bool:
        return buf.same_as(dout) or any(buf.same_as(t) for t in tainted)

    writer, readers_of_in, producers, reads_of = None, [], {}, {}
    for blk in blocks:
        reads = [r for r in blk.reads if tracked(r.source)]
        writes = [w for w in blk.writes if tracked(w.source)]
        if not (reads or writes):
            continue
        if not blk.iter_vars:
            return f"block {blk.name_hint} without iteration accesses the buffers"
        if any(w.source.same_as(din) for w in writes) or any(r.source.same_as(dout) for r in reads):
            return f"block {blk.name_hint} writes the input or reads the output"
        if blk.init is not None or any(iv.iter_type != 0 for iv in blk.iter_vars):
            return f"block {blk.name_hint} is a reduction"
        for r in reads + writes:
            if _static_dims(r.source) != shape:
                return f"block {blk.name_hint} accesses another element of {r.source.name}"
        if not _one_point(reads + writes, blk, shape):
            return f"block {blk.name_hint} accesses another element of a tracked buffer"
        if any(w.source.same_as(dout) for w in writes):
            if writer is not None:
                return "two blocks write the output"
            writer = blk
        if any(r.source.same_as(din) for r in reads):
            readers_of_in.append(blk)
        for w in writes:
            producers.setdefault(w.source, []).append(blk)
        reads_of[blk] = [r.source for r in reads]
    if writer is None or not readers_of_in:
        return "no block writes the output" if writer is None else "no block reads the input"
    feeds, todo = {writer}, [writer]  # the writer and every block it depends on
    while todo:
        blk = todo.pop()
        for buf in reads_of.get(blk, []):
            for src in next((v for k, v in producers.items() if k.same_as(buf)), []):
                if src not in feeds:
                    feeds.add(src)
                    todo.append(src)
    late = [b.name_hint for b in readers_of_in if b not in feeds]
    return f"blocks {late} read the input but do not feed the output" if late else None


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
