"""Helpers shared by the schedule rules."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")

# Below this many output elements a kernel is not worth a parallel launch.
MIN_PARALLEL_ELEMS = 4096


def as_int(x) -> int | None:
    if isinstance(x, int):
        return x
    if isinstance(x, tirx.IntImm):
        return int(x)
    return None


def iter_values(sch: s_tir.Schedule, block) -> list:
    """The SBlockRealize bindings of ``block`` (found by walking its parent loop body)."""
    return list(_get_sblock_realize(sch, block).iter_values)


def root_blocks(sch: s_tir.Schedule) -> list:
    """The blocks under the root block; none for a PrimFunc without blocks (legalized MaxUnpool
    is plain loops: asking it for "root" raised out of fuse_conv_pool's pool analysis)."""
    try:
        root = sch.get_sblock("root")
    except s_tir.ScheduleError:
        return []
    return list(sch.get_child_blocks(root))


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def loop_kinds(sch: s_tir.Schedule, block) -> list[str] | None:
    """``"S"``/``"R"`` for each loop above ``block`` when each loop binds exactly one block axis
    (the form LegalizeOps produces), else None."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    vals = iter_values(sch, block)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    kinds = ["S"] * len(loops)
    for iv, val in zip(stmt.iter_vars, vals):
        if as_int(iv.dom.extent) == 1 and as_int(val) is not None:
            continue
        if not isinstance(val, tirx.Var):
            return None
        idx = next((i for i, lv in enumerate(loop_vars) if lv.same_as(val)), None)
        if idx is None:
            return None
        if iv.iter_type == tirx.IterVar.CommReduce:
            kinds[idx] = "R"
        elif iv.iter_type != tirx.IterVar.DataPar:
            return None
    return kinds


def plain_indices(region) -> list | None:
    """The loop variables indexing a buffer region, one per axis (None for a constant index), or
    None when some axis is indexed by an expression."""
    out = []
    for r in region.region:
        if isinstance(r.min, tirx.Var):
            out.append(r.min)
        elif as_int(r.min) is not None:
            out.append(None)
        else:
            return None
    return out


def extent(sch, loop) -> int | None:
    return as_int(sch.get(loop).extent)


def _buffers(func: tirx.PrimFunc) -> list:
    """The parameters and the root block's allocations of ``func`` (buffer-typed Vars)."""
    out = list(func.params)
    sch = s_tir.Schedule(func)
    try:
        root = sch.get(sch.get_sblock("root"))
    except s_tir.ScheduleError:  # a PrimFunc without blocks (see root_blocks)
        return out
    return out + list(root.alloc_buffers)


def undeclared_buffers(sch: s_tir.Schedule) -> set:
    """Buffers that a root block's body reads or writes without declaring them in its
    ``T.reads``/``T.writes`` (opaque blocks of legalized extern ops such as NonMaxSuppression's
    searchsorted/all_class_nms, declared with empty regions). TVM's dependence analysis does not
    see these accesses, so inlining a block that produces or consumes one of them drops a buffer
    that is still used ("Buffer T_gather is used before its definition")."""
    # TVM 0.27: buffers are buffer-typed Vars (params, root allocations), mapped to themselves
    var_map = {b: b for b in _buffers(sch.mod["main"])}
    hidden = set()
    for b in root_blocks(sch):
        stmt = sch.get(b)
        declared = {r.source for r in list(stmt.reads) + list(stmt.writes)}
        reads, writes = s_tir.analysis.get_sblock_read_write_region(stmt, var_map)
        hidden.update(r.source for r in list(reads) + list(writes) if r.source not in declared)
    return hidden


# Element types TVM lowers on CPUs through integer storage (BF16/FP8 legalization), element by
# element: a vectorized store of them fails to lower ("dtype mismatch on BufferStore ... uint16
# ... bfloat16x8", "if_then_else can only take scalar condition").
EMULATED_DTYPES = ("bfloat16", "float8", "float6", "float4")
# Intrinsics TVM 0.27's llvm backend lowers only for scalars ("unknown intrinsic tirx.cosh" in a
# vectorized loop); checked for every unary math op of tirx (tests/schedules/test_common.py).
SCALAR_ONLY_INTRINSICS = ("tirx.cosh", "tirx.sinh")


def emulated_dtypes(func: tirx.PrimFunc) -> list[str]:
    """The buffers' element types of ``func`` that TVM emulates (:data:`EMULATED_DTYPES`)."""
    found = {str(b.ty.dtype) for b in _buffers(func) if hasattr(b.ty, "dtype")}
    return sorted(d for d in found if d.startswith(EMULATED_DTYPES))


def called_ops(func) -> set[str]:
    """Names of the ops ``func`` (a PrimFunc, statement or expression) calls (``tirx.exp``)."""
    import tvm_ffi

    found = set()

    def record(call):
        if isinstance(call.op, tvm.ir.Op):
            found.add(call.op.name)
        return call

    tvm_ffi.structural_map(func, [(tvm.ir.Call, record)])
    return found


def no_vector_form(func: tirx.PrimFunc) -> str | None:
    """Why TVM cannot lower ``func`` vectorized on a CPU (None when it can): buffers of an
    emulated element type, or a call of a scalar-only intrinsic."""
    emulated = emulated_dtypes(func)
    if emulated:
        return (f"{', '.join(emulated)} buffers: TVM emulates them element by element through "
                "integer storage (no vector form)")
    scalar = sorted(called_ops(func) & set(SCALAR_ONLY_INTRINSICS))
    if scalar:
        return f"calls {', '.join(scalar)}, which TVM lowers on CPUs only as a scalar libm call"
    return None


def _plain_copy(store) -> bool:
    """A store of the same element of another buffer (perhaps cast): an identity copy (TVM 0.27:
    a BufferLoad is a ``tvm.ir.TensorLoad``). A copy that moves elements (a transposed conv's
    flipped kernel) is a stage the rules match, and stays."""
    value = store.value
    if isinstance(value, tirx.Cast):
        value = value.value
    return (isinstance(value, tvm.ir.TensorLoad) and len(value.indices) == len(store.indices)
            and all(a.same_as(b) for a, b in zip(value.indices, store.indices)))


def inline_plain_copies(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each stage that only copies a buffer inlined into its readers.

    TVM's legalized ``conv2d`` writes its input into ``pad_temp`` even with no padding (every
    1x1 conv): a copy of the whole input as its own loop nest, 3x the convolution on 128->16 at
    55x55 (244 vs 71 us inlined, 2-core AVX-512 host). What cannot be inlined stays."""
    import tvm_ffi

    names = []

    def visit(b):
        if isinstance(b.body, tirx.BufferStore) and b.init is None and _plain_copy(b.body):
            names.append(b.name_hint)

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, visit)])
    if not names:
        return func
    sch = s_tir.Schedule(func)
    done = False
    for name in names:
        try:
            sch.compute_inline(sch.get_sblock(name))
            done = True
        except Exception:  # noqa: BLE001 - not inlinable (an output, a reduction's operand..)
            pass
    return sch.mod["main"] if done else func


def around(sch: s_tir.Schedule, name: str) -> tuple:
    """``(block, prologue blocks, output block or None)`` of the root block ``name``: the blocks
    before it, and the one after it that writes the output, the epilogues between inlined."""
    blocks = root_blocks(sch)
    pos = [sch.get(b).name_hint for b in blocks].index(name)
    epis = blocks[pos + 1:]
    for b in epis[:-1]:
        sch.compute_inline(b)
    return sch.get_sblock(name), blocks[:pos], (epis[-1] if epis else None)


def inline_all(sch: s_tir.Schedule, keep=()) -> None:
    """Inline every injective non-output block into its consumers (or producers) where legal;
    never one that touches a buffer some block accesses undeclared (:func:`undeclared_buffers`)
    nor one ``keep`` names (names, or a test ``keep(sch, block)`` asked as inlining goes on)."""
    hidden = undeclared_buffers(sch)
    changed = True
    while changed:
        changed = False
        blocks = root_blocks(sch)
        for b in blocks[:-1]:
            stmt = sch.get(b)
            if (keep(sch, b) if callable(keep) else stmt.name_hint in keep) or is_reduction(sch, b):
                continue
            if any(r.source in hidden for r in list(stmt.reads) + list(stmt.writes)):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001 - not inlinable: try the other direction
                pass
            try:
                sch.reverse_compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001
                pass


def vectorize_inner(sch: s_tir.Schedule, block, lanes: int, whole: int = 2,
                    tail: bool = True) -> bool:
    """Vectorize the innermost loop of ``block``: split by ``lanes`` when they divide it, else
    vectorize it whole when it is at most ``whole`` x ``lanes`` long. ``tail``: a longer loop
    that ``lanes`` do not divide is split and its inner loop unroll-annotated (not vectorized).
    (The matmul epilogue and the depthwise tile use ``whole=4, tail=False``.)"""
    loops = sch.get_loops(block)
    if not loops:
        return False
    ext = extent(sch, loops[-1])
    if ext is None or ext < 2:
        return False
    if ext % lanes == 0 and ext > lanes:
        _, v = sch.split(loops[-1], [None, lanes])
        sch.vectorize(v)
        return True
    if ext <= whole * lanes:
        sch.vectorize(loops[-1])
        return True
    if tail and ext > lanes:
        # a tail: LLVM vectorizes the body of a split loop with a bounds check poorly, so only
        # unroll-annotate the inner loop
        _, v = sch.split(loops[-1], [None, lanes])
        sch.annotate(v, "pragma_auto_unroll_max_step", lanes)
        sch.annotate(v, "pragma_unroll_explicit", 1)
    return False


def parallel_outer(sch: s_tir.Schedule, block, kinds: list[str], keep_inner: int = 0) -> bool:
    """Fuse the leading spatial loops of ``block`` (all but ``keep_inner`` innermost ones) and
    parallelize them when there is enough work."""
    loops = sch.get_loops(block)
    lead = []
    for lp, k in zip(loops[: len(loops) - keep_inner], kinds):
        if k != "S":
            break
        lead.append(lp)
    if not lead:
        return False
    total = 1
    for lp in loops:
        total *= extent(sch, lp) or 1
    fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if total >= MIN_PARALLEL_ELEMS and (extent(sch, fused) or 2) > 1:
        sch.parallel(fused)
        return True
    return False


# ---- the matcher the matmul, conv2d and depthwise rules share ---------------------------------
@dataclass
class SumOfProducts:
    """The one reduction block of a kernel, ``C[..] = C[..] + X[..] * Y[..]`` (casts around the
    product allowed), with its iteration variables' kinds and static extents."""

    sch: s_tir.Schedule
    block: object  # the SBlockRV
    stmt: object  # the SBlock
    kinds: dict  # iter var -> IterVar type (DataPar / CommReduce)
    extents: dict  # iter var -> int
    dtype: str

    @property
    def name(self) -> str:
        return self.stmt.name_hint

    @property
    def reads(self) -> list:
        return list(self.stmt.reads)

    @property
    def write(self):
        return self.stmt.writes[0]

    def reduction_vars(self) -> list:
        """Reduction variables with an extent above 1."""
        return [v for v, k in self.kinds.items()
                if k == tirx.IterVar.CommReduce and self.extents[v] > 1]

    def iter_values(self) -> list:
        return iter_values(self.sch, self.block)

    def param_index(self, buffer) -> int | None:
        """Position of ``buffer`` among the PrimFunc's parameters (None: an intermediate)."""
        func = self.sch.mod["main"]
        return next((i for i, p in enumerate(func.params) if p.same_as(buffer)), None)


def buffer_dtype(buf) -> str:
    return str(buf.ty.dtype) if hasattr(buf, "ty") and hasattr(buf.ty, "dtype") else str(buf.dtype)


def match_sum_of_products(func: tirx.PrimFunc, dtypes=None) -> tuple[SumOfProducts | None, str]:
    """Match ``func`` as one reduction block that accumulates a product of two buffers (the
    shape matmul and convolutions share); returns (match, reason it did not match). Injective
    blocks before or after it are allowed (prologues, padding, epilogues). ``dtypes``: accepted
    accumulator dtypes (None: any)."""
    sch = s_tir.Schedule(func)
    try:
        blocks = root_blocks(sch)
    except Exception:  # noqa: BLE001 - no root block: an opaque kernel
        return None, "no root block"
    reds = [b for b in blocks if is_reduction(sch, b)]
    if len(reds) != 1:
        return None, f"{len(reds)} reduction blocks (needs exactly 1)"
    block = reds[0]
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or len(stmt.reads) != 2:
        return None, "reduction block does not read exactly two buffers"
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return None, "reduction body is not C = C + ..."
    prod = body.value.b
    while isinstance(prod, tirx.Cast):
        prod = prod.value
    if not isinstance(prod, tirx.Mul):
        return None, "reduction body is not a sum of products"
    dtype = buffer_dtype(body.buffer)
    if dtypes is not None and dtype not in dtypes:
        return None, f"dtype {dtype} ({', '.join(dtypes)} only)"
    kinds = {iv.var: iv.iter_type for iv in stmt.iter_vars}
    extents = {iv.var: as_int(iv.dom.extent) for iv in stmt.iter_vars}
    if any(e is None for e in extents.values()):
        return None, "dynamic shape"
    return SumOfProducts(sch, block, stmt, kinds, extents, dtype), "sum of products"


def loop_var_index(sch: s_tir.Schedule, block) -> dict | None:
    """Block iteration variable -> index of the loop it is bound to, for a block whose every
    non-unit axis is bound to exactly one of its loops (None otherwise)."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    lvars = [sch.get(lp).loop_var for lp in loops]
    vals = iter_values(sch, block)
    out = {}
    for iv, val in zip(stmt.iter_vars, vals):
        if as_int(iv.dom.extent) == 1 and as_int(val) is not None:
            continue
        if not isinstance(val, tirx.Var):
            return None
        idx = next((i for i, lv in enumerate(lvars) if lv.same_as(val)), None)
        if idx is None:
            return None
        out[iv.var] = idx
    return out


def coefficient(expr, var) -> int | None:
    """``a`` when ``expr`` is ``a * var + (terms without var)``, else None (0: no ``var``)."""
    if isinstance(expr, tirx.Var):
        return 1 if expr.same_as(var) else 0
    if isinstance(expr, tirx.IntImm):
        return 0
    if isinstance(expr, tirx.Add):
        a, b = coefficient(expr.a, var), coefficient(expr.b, var)
        return None if a is None or b is None else a + b
    if isinstance(expr, tirx.Mul):
        ca, cb = as_int(expr.b), as_int(expr.a)
        if ca is not None:
            c = coefficient(expr.a, var)
            return None if c is None else c * ca
        if cb is not None:
            c = coefficient(expr.b, var)
            return None if c is None else c * cb
    if any(x.same_as(var) for x in tirx.analysis.undefined_vars(expr)):
        return None
    return 0
