"""What the matmul rule matches (:mod:`.matmul`): ``C[b.., i, j] += A[.. i .. k ..] *
B[.. k .. j ..]`` with every index a plain iteration variable, in any operand order (the NT / TN
forms attention and Gemm produce), and the role of every loop and of B's dims."""

from __future__ import annotations

from dataclasses import dataclass, field

from tvm import tirx

from ..common import as_int, iter_values, match_sum_of_products


@dataclass
class MatmulMatch:
    """What the analysis found: roles of the loops and operands of the main block."""

    block: str  # name of the reduction block
    a_index: int  # index of A in the block's reads
    b_index: int  # index of B in the block's reads
    b_param: int | None  # position of B among the PrimFunc's params (None: B is an intermediate)
    roles_b: list[str]  # role of each dim of B: "b" batch, "k", "n", "1" (unit/other)
    batch: int
    m: int
    n: int
    k: int
    loop_roles: list[str]  # role of each loop of the block, in order: "b", "m", "n", "k", "1"
    dtype: str
    m_axes: list = field(default_factory=list)  # iteration-variable indices of the M axes
    n_axis: int = -1  # and of the N axis

    def shape_key(self) -> str:
        return f"b{self.batch}m{self.m}n{self.n}k{self.k}"

    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k


def _var_of(expr):
    """The iteration variable an index expression is, or None (constants give 'const')."""
    if isinstance(expr, tirx.Var):
        return expr
    if isinstance(expr, tirx.IntImm):
        return "const"
    return None


def analyze(func: tirx.PrimFunc) -> tuple[MatmulMatch | None, str]:
    """Match ``func`` as a matmul; returns (match, reason) with the reason it did not match."""
    sop, why = match_sum_of_products(func, dtypes=("float32",))
    if sop is None:
        return None, why
    sch, main, stmt = sop.sch, sop.block, sop.stmt
    kinds, extents = sop.kinds, sop.extents

    def dims(region):
        out = []
        for r in region.region:
            if as_int(r.extent) != 1:
                return None
            out.append(_var_of(r.min))
        return out

    c_dims = dims(stmt.writes[0])
    r_dims = [dims(r) for r in stmt.reads]
    if c_dims is None or any(d is None for d in r_dims) or None in c_dims:
        return None, "an operand index is not a plain loop variable"
    if any(None in d for d in r_dims):
        return None, "an operand index is not a plain loop variable"
    sets = [set(v for v in d if v != "const") for d in r_dims]
    c_set = set(v for v in c_dims if v != "const")
    red = [v for v, k in kinds.items() if k == tirx.IterVar.CommReduce and extents[v] > 1]
    if not red:  # K = 1 (an outer product): the unit reduction axis is K
        red = [v for v, k in kinds.items() if k == tirx.IterVar.CommReduce]
    if len(red) != 1:
        return None, f"{len(red)} non-trivial reduction axes"
    kv = red[0]
    if not (kv in sets[0] and kv in sets[1]):
        return None, "reduction axis not in both operands"
    # The N axis is C's innermost non-unit dim; B is the operand that has it.
    inner = [v for v in c_dims if v != "const" and extents[v] > 1]
    last = c_dims[-1]
    if last != "const" and extents[last] == 1 and (last in sets[0]) != (last in sets[1]):
        inner.append(last)  # N = 1 ([M, K] @ [K, 1]): the unit column axis of B is N
    if not inner:
        return None, "output has no non-unit dim"
    nv_ = inner[-1]
    if (nv_ in sets[0]) == (nv_ in sets[1]):
        return None, "innermost output axis is in both operands (not a matmul)"
    b_i = 0 if nv_ in sets[0] else 1
    a_i = 1 - b_i
    roles = {}
    for v, kind in kinds.items():
        if v == kv:
            roles[v] = "k"
        elif v == nv_:
            roles[v] = "n"
        elif extents[v] == 1:
            roles[v] = "1"
        elif kind != tirx.IterVar.DataPar or v not in c_set:
            return None, "unexpected iteration axis"
        elif v in sets[a_i] and v in sets[b_i]:
            roles[v] = "b"
        elif v in sets[a_i]:
            roles[v] = "m"
        else:
            return None, "a spatial axis only in B besides N"
    loops = sch.get_loops(main)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    realize_vals = iter_values(sch, main)
    if realize_vals is None or len(realize_vals) != len(loops):
        return None, "block bindings are not one loop per axis"
    if not all(isinstance(val, tirx.Var) for val in realize_vals):
        return None, "block binding is not a plain loop variable"
    var_by_loop = {}
    for iv, val in zip(stmt.iter_vars, realize_vals):
        idx = next((i for i, lv in enumerate(loop_vars) if lv.same_as(val)), None)
        if idx is None:
            return None, "binding does not use the block's loops"
        var_by_loop[idx] = iv.var
    loop_roles = [roles[var_by_loop[i]] for i in range(len(loops))]
    ivs = [iv.var for iv in stmt.iter_vars]
    m_loops = [i for i, r in enumerate(loop_roles) if r == "m"]
    if len(m_loops) > 1:
        # rows over several axes ([1, H, W, C] @ [C, N], ConvNeXt's channels-last MLP): the
        # outer ones are looped over like a batch (B does not index them), the tile runs
        # over the innermost (every tile one rectangular region of A and C)
        for i in m_loops[:-1]:
            roles[var_by_loop[i]] = "b"
            loop_roles[i] = "b"
    m_axes = [i for i, v in enumerate(ivs) if roles[v] == "m"]
    n_axis = next(i for i, v in enumerate(ivs) if roles[v] == "n")
    b_region = stmt.reads[b_i]
    roles_b = [("1" if d == "const" else roles[d]) for d in r_dims[b_i]]
    b_param = None
    for i, p in enumerate(func.params):
        if p.same_as(b_region.source):
            b_param = i
    batch = 1
    m = n = k = 1
    for v, r in roles.items():
        if r == "b":
            batch *= extents[v]
        elif r == "m":
            m *= extents[v]
        elif r == "n":
            n = extents[v]
        elif r == "k":
            k = extents[v]
    return (
        MatmulMatch(
            block=stmt.name_hint,
            a_index=a_i,
            b_index=b_i,
            b_param=b_param,
            roles_b=roles_b,
            batch=batch,
            m=m,
            n=n,
            k=k,
            loop_roles=loop_roles,
            dtype=sop.dtype,
            m_axes=m_axes,
            n_axis=n_axis,
        ),
        "matmul",
    )
