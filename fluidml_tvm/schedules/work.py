"""The work of a kernel, for the roofline view (:mod:`fluidml_tvm.roofline`)."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx


def kernel_work(func: tirx.PrimFunc) -> dict:
    """``{"flops", "bytes"}`` of one PrimFunc (0 where a shape is symbolic): its floating-point
    operations (TVM's ``EstimateTIRFlops``; a multiply-add is 2) and the bytes of its
    parameters (every input read once, every output written once: the least traffic the kernel
    can cause)."""
    try:
        flops = float(tvm_ffi.get_global_func("s_tir.analysis.EstimateTIRFlops")(func.body))
    except Exception:  # noqa: BLE001 - symbolic extents and the like
        flops = 0.0
    nbytes = 0
    for param in func.params:
        ty = param.ty  # a buffer parameter's type carries its shape and dtype
        shape = getattr(ty, "shape", None)
        if shape is None or not hasattr(ty, "dtype"):
            continue
        n = 1
        for d in shape:
            if not isinstance(d, tirx.IntImm):
                n = 0
                break
            n *= int(d)
        nbytes += n * tvm.runtime.DataType(str(ty.dtype)).bits // 8
    return {"flops": flops, "bytes": int(nbytes)}
