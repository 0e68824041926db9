"""The memory verifier's kernel analysis (:mod:`.verify`): whether a kernel may write one
parameter over another. Its own code, like the verifier's: it shares none with the planner's
in-place check (:mod:`.inplace`) and reads only the kernel's TensorIR."""

from __future__ import annotations

import tvm
import tvm_ffi


def _fields(obj):
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    if info is None:
        return []
    skip = {"span", "annotations", "reads", "writes", "ty", "alloc_buffers", "match_buffers"}
    return [getattr(obj, f.name) for f in info.fields if f.name not in skip]


def elementwise_overwrite(prim, src: int, dst: int) -> bool:
    """True if writing parameter ``dst`` over parameter ``src`` cannot change what is read.

    Checked on the accesses themselves (every load and store, found by a walk over all fields of
    the TensorIR, grouped by enclosing block). Buffers that carry values of ``src`` are ``src``
    and the kernel's own buffers stored by a block that loads a carrier. Each block that loads or
    stores a carrier or ``dst`` must be data-parallel without init and access them only at its
    iteration point ``v`` (``dst``'s shape); one block stores ``dst``, as its whole body, so it
    loads before it stores; ``dst`` is never loaded, ``src`` never stored; every block loading
    ``src`` reaches the ``dst`` block through carriers it stores and that block loads.
    """
    if not isinstance(prim, tvm.tirx.PrimFunc):
        return False
    p_src, p_dst = prim.params[src], prim.params[dst]
    if str(p_src.dtype) != str(p_dst.dtype):
        return False
    try:
        shape = [int(x) for x in p_dst.shape]
        if [int(x) for x in p_src.shape] != shape:
            return False
    except (TypeError, ValueError):
        return False
    acc: dict = {}  # block -> list of ("load" | "store", buffer var, indices, node)
    own: list = []  # buffers the kernel allocates
    outside = {"flag": False}

    def walk(obj, block):
        if isinstance(obj, (str, int, float, bool)) or obj is None:
            return
        if isinstance(obj, tvm.s_tir.SBlock):
            block = obj
            acc.setdefault(block, [])
            own.extend(list(obj.alloc_buffers))
        if isinstance(obj, tvm.ir.expr.TensorLoad):
            if block is None:
                outside["flag"] = True
            else:
                acc[block].append(("load", obj.source, obj.indices, obj))
        if isinstance(obj, tvm.tirx.BufferStore):
            if block is None:
                outside["flag"] = True
            else:
                acc[block].append(("store", obj.buffer, obj.indices, obj))
        if isinstance(obj, tvm.ir.expr.Var):
            return
        children = _fields(obj)
        if not children and hasattr(obj, "__iter__") and not isinstance(obj, dict):
            children = list(obj)
        for ch in children:
            walk(ch, block)

    walk(prim.body, None)
    if outside["flag"]:
        return False

    def member(buf, bufs) -> bool:
        return any(buf.same_as(b) for b in bufs)

    carriers = [p_src]
    grew = True
    while grew:
        grew = False
        for items in acc.values():
            if any(k == "load" and member(b, carriers) for k, b, _, _ in items):
                for k, b, _, _ in items:
                    if k == "store" and member(b, own) and not member(b, carriers):
                        carriers.append(b)
                        grew = True
    writer, loaders = None, []
    for blk, items in acc.items():
        mine = [x for x in items if member(x[1], carriers) or x[1].same_as(p_dst)]
        if not mine:
            continue
        ivs = [iv.var for iv in blk.iter_vars]
        if blk.init is not None or not ivs or any(iv.iter_type != 0 for iv in blk.iter_vars):
            return False
        for kind, buf, _, _ in mine:
            if kind == "load" and buf.same_as(p_dst):
                return False
            if kind == "store" and buf.same_as(p_src):
                return False
            if [int(x) for x in buf.shape] != shape:
                return False
        if not _own_element(blk, [idx for _, _, idx, _ in mine], shape):
            return False
        for kind, buf, _, node in mine:
            if kind == "store" and buf.same_as(p_dst):
                if writer is not None or not blk.body.same_as(node):
                    return False
                writer = blk
        if any(k == "load" and b.same_as(p_src) for k, b, _, _ in mine):
            loaders.append(blk)
    if writer is None or not loaders:
        return False
    reach, todo = {writer}, [writer]
    while todo:
        blk = todo.pop()
        needed = [b for k, b, _, _ in acc[blk] if k == "load" and member(b, own)]
        for other, items in acc.items():
            if other not in reach and any(
                k == "store" and member(b, needed) for k, b, _, _ in items
            ):
                reach.add(other)
                todo.append(other)
    return all(b in reach for b in loaders)


def _own_element(blk, index_lists, shape) -> bool:
    """Whether every access of the block is at one element ``g(v)`` of its iteration point, ``g``
    one-to-one from the block's domain (as many points as the buffer has elements) onto the
    buffer: the plain iteration variables, or any index tuple TVM's iter-map analysis proves
    bijective (rows x columns fused: ``[.., p // X, p % X]``)."""
    ivs = [iv.var for iv in blk.iter_vars]
    first = list(index_lists[0])
    for idx in index_lists:
        if len(idx) != len(first):
            return False
        if not all(tvm_ffi.structural_equal(a, b) for a, b in zip(idx, first)):
            return False
    if len(first) == len(ivs) and all(a.same_as(v) for a, v in zip(first, ivs)):
        return True
    points = 1
    for iv in blk.iter_vars:
        if not isinstance(iv.dom.extent, tvm.tirx.IntImm):
            return False
        points *= int(iv.dom.extent.value)
    if points != _prod(shape):
        return False
    from tvm.sym.iter_affine_map import detect_iter_map

    found = detect_iter_map(first, {iv.var: iv.dom for iv in blk.iter_vars},
                            check_level="bijective")
    return len(found.indices) == len(first)


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p
