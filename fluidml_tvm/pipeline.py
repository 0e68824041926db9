"""The ``fluidml`` Relax pipeline.

It is TVM's fused CPU pipeline (``relax.backend.cpu_generic``) with FluidML's stages put in their
slots, each behind its own kill switch::

    library dispatch
    [split]      FluidML graph rewrites: inference BatchNorm folded into the conv before it;
                 one projection per slice of a fused constant-weight projection (QKV);
                 residual sums fused into the kernel that lowers the planned memory (measured)
    [layout]     FluidML layout selection (before legalization, so FoldConstant cannot undo it)
    legalize     [FluidMLFoldConstants], [FluidMLWinograd], LegalizeOps, AnnotateTIROpPattern,
                 FoldConstant, FuseOps,
                 [FluidMLFuseConvPool],
                 FuseTIR (conv+ReLU+max-pool fusion; on with the schedule stage)
    [schedule]   FluidML TensorIR schedules for every fused PrimFunc
    lower        RewriteDataflowReshape, ToNonDataflow, RemovePurityChecking, CallTIRRewrite
    [memory]     FluidML arena planner in StaticPlanBlockMemory's slot
    finalize     LowerAllocTensor, KillAfterLastUse, LowerRuntimeBuiltin, ComputePrimValue, ...

A disabled stage is an empty ``Sequential``; a disabled memory stage puts the stock
StaticPlanBlockMemory back. ``fluidml=0`` returns ``relax.get_default_pipeline(target)`` itself.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from .options import Options

# The pipeline's phases, in order; FluidML's own stages are "split", "layout", "schedule" and
# "memory" (a Sequential named ``fluidml.<phase>`` each: --print-ir-after / --dump-ir names).
PHASES = ("dispatch", "split", "layout", "legalize", "schedule", "lower", "memory", "weights",
          "finalize")
# Stages that leave decisions on the module (:mod:`fluidml_tvm.decisions`), in report order.
DECISION_STAGES = ("fold_batchnorm", "split_projection", "residual_order", "layout",
                   "layout_verify", "winograd", "fuse_conv_pool", "schedule", "memory")
# Stock TVM passes worth a dump of their own (--dump-ir).
STOCK_DUMPS = ("LegalizeOps", "FoldConstant", "FuseOps", "FuseTIR", "CallTIRRewrite",
               "StaticPlanBlockMemory", "VMShapeLower")


def phase_name(phase: str) -> str:
    """The pass name of a phase's Sequential (``fluidml.layout``)."""
    return f"fluidml.{phase}"


def dump_names() -> list[str]:
    """Passes after which ``--dump-ir`` writes the module."""
    return [phase_name(p) for p in PHASES if p != "weights"] + list(STOCK_DUMPS)


def _stage(name: str, passes: list) -> tvm.transform.Pass:
    return tvm.transform.Sequential(passes, name=phase_name(name))


def split_passes(target, options: Options) -> list:
    """Graph rewrites before the layout stage: BatchNorm folding, the QKV split, residual order."""
    out = []
    if options.fold_batchnorm:
        from .passes.fold_batchnorm import FluidMLFoldBatchNorm

        out.append(FluidMLFoldBatchNorm())
    if options.split_projection:
        from .passes.split_projection import FluidMLSplitProjection

        out.append(FluidMLSplitProjection())
    if options.residual_order:
        from .passes.residual_order import FluidMLResidualOrder

        out.append(FluidMLResidualOrder(target))
    return out


def legalize_passes(target, options: Options) -> list:
    """TVM's legalize passes (LegalizeOps without its per-``take`` warning,
    :mod:`.passes.legalize`); FluidMLFuseConvPool between FuseOps and FuseTIR when on (CPU
    targets with the schedule stage on: only the conv_pool schedule keeps the fused
    convolution output small)."""
    from .passes.legalize import legalize_ops

    passes = list(cpu_generic.legalize_passes(target))
    assert passes[0].info.name == "LegalizeOps", passes[0].info.name
    passes[0] = legalize_ops()
    if options.fold_constants:  # ops on constants with numpy: FoldConstant compiles a kernel each
        from .passes.fold_constants import FluidMLFoldConstants

        passes.insert(0, FluidMLFoldConstants())
    if options.winograd and options.schedule and target.kind.name == "llvm":
        from .passes.winograd import FluidMLWinograd  # after the folds: the weight is a constant

        passes.insert(1 if options.fold_constants else 0,
                      FluidMLWinograd(target, options.cache_dir))
    if options.fuse_conv_pool and options.schedule and target.kind.name == "llvm":
        from .passes.fuse_conv_pool import fusion_passes

        i = [p.info.name for p in passes].index("FuseTIR")
        passes[i:i + 1] = fusion_passes(chain=options.fuse_conv_chain)
    return passes


def layout_passes(target, options: Options) -> list:
    if not options.layout:
        return []
    from .passes.layout import layout_passes as stage

    return stage(target, options)


def schedule_passes(target, options: Options) -> list:
    if target.kind.name == "cuda":  # GPU kernels need thread bindings: never empty
        from .schedules import gpu

        return gpu.schedule_passes(target, options)
    if not options.schedule:
        return []
    from .schedules import schedule_passes as stage

    return stage(target, options)


def memory_passes(target, options: Options) -> list:
    if options.memory:
        from .passes.memory import memory_passes as stage

        passes = stage(target, options)
        if passes:
            return passes
    return [relax.transform.StaticPlanBlockMemory()]


def phases(target: tvm.target.Target, options: Options, before_finalize=()) -> list:
    """The pipeline as named ``(phase, passes)`` (used for ``--print-ir-after`` / ``--dump-ir``).

    ``before_finalize``: passes :func:`fluidml_tvm.compile` adds after memory planning (the
    weights externalization, which changes ``main``'s signature and so is not part of the
    registered pipeline).
    """
    finalize = cpu_generic.finalize_passes(target)
    assert finalize[0].info.name == "StaticPlanBlockMemory", finalize[0].info.name
    out = [
        ("dispatch", cpu_generic.library_dispatch_passes(target)),
        ("split", split_passes(target, options)),
        ("layout", layout_passes(target, options)),
        ("legalize", legalize_passes(target, options)),
        ("schedule", schedule_passes(target, options)),
        ("lower", cpu_generic.dataflow_lower_passes(target)),
        ("memory", memory_passes(target, options)),
        ("weights", list(before_finalize)),
        ("finalize", finalize[1:]),
    ]
    assert tuple(name for name, _ in out) == PHASES
    return out


def lower_to_memory_slot(mod: tvm.IRModule, target, options=None) -> tvm.IRModule:
    """Run the ``fluidml`` pipeline's phases that come before its memory slot."""
    options = options or Options()
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    seq = []
    for name, passes in phases(target, options):
        if name == "memory":
            break
        seq += passes
    with target:
        return tvm.transform.Sequential(seq)(mod)


def get_pipeline(target: tvm.target.Target, options: Options | None = None,
                 before_finalize=()) -> tvm.transform.Pass:
    """The Relax pipeline for ``options`` (stock TVM's when ``options.enable`` is false)."""
    options = options or Options()
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if not options.enable:
        if target.kind.name == "cuda":  # compiled kernels (fatbin), not CUDA source
            from .cuda import ensure_build_support

            ensure_build_support(target)
        return relax.get_default_pipeline(target)
    seq = tvm.transform.Sequential(
        [_stage(name, passes) for name, passes in phases(target, options, before_finalize)],
        name="fluidml",
    )

    @tvm.transform.module_pass(opt_level=0, name="FluidMLPipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            return seq(mod)

    return _pipeline


@relax.register_pipeline("fluidml")
def _registered(target=None, options: Options | None = None, **kwargs):
    """``tvm.compile(mod, target, relax_pipeline=relax.get_pipeline("fluidml", target=t))``
    (add ``tir_pipeline=schedules.stack_buffers.PIPELINE``, registered here, for the kernels'
    row buffers on the stack as ``fluidml_tvm.compile`` builds them)."""
    from .schedules import stack_buffers

    stack_buffers.register()
    if target is None:
        target = tvm.target.Target.current(allow_none=False)
    if kwargs:
        options = Options.from_pass_config(kwargs, base=options)
    return get_pipeline(target, options)
