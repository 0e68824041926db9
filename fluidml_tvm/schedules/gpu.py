"""GPU (CUDA) schedules for the pipeline's schedule slot.

Every fused PrimFunc of a GPU target must have its loops bound to blocks and threads before it can
be compiled, so this slot is never empty for CUDA, even with ``fluidml.schedule=0``: it then holds
what stock TVM's CUDA pipeline applies (``relax.backend.cuda.legalize_passes``), dlight's GPU rules
in priority order. The first rule that returns a schedule wins; ``Fallback`` binds whatever is
left (a plain thread-bound loop nest).

The CPU rules (FluidMLSchedule) live beside this file and never run for CUDA targets.
"""

from __future__ import annotations


def is_gpu(target) -> bool:
    return target.kind.name == "cuda"


def schedule_passes(target, options) -> list:
    """dlight's GPU rules: Matmul, GEMV, Reduction, GeneralReduction, then Fallback.

    Runs inside the pipeline's ``with target:``; also makes sure this process can emit compiled
    kernels for ``target`` (:func:`fluidml_tvm.cuda.ensure_build_support`).
    """
    from tvm.s_tir import dlight as dl

    from ..cuda import ensure_build_support

    ensure_build_support(target)
    return [
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    ]
