"""FluidML Relax passes, one per file.

``layout_stage`` and ``memory_stage`` return the pass lists the pipeline puts in its layout and
memory slots (an empty list: that stage has nothing to run yet).
"""


def layout_stage(target, options, apply=None) -> list:
    """Passes of the layout slot (before legalization): FluidML layout selection.

    The plan and the reason for every decision are always computed and left in the module
    attribute ``fluidml.layout_report``. The IR is rewritten only when the decisions come from
    measured kernels (``fluidml.cost=measured``, the default), and only to layouts that kernels
    absorb (transposes removed, none inserted); the analytic model's plan ran 1.33x slower on
    tiny BERT, so ``analytic``/``learned`` only report. ``apply`` overrides the choice. With
    ``fluidml.layout_verify`` (default) ``fluidml_tvm.compile`` also times each new plan against
    the layouts-off compile and keeps it only if it measured faster (see
    benchmarks/results/ for the per-model on/off ratios).
    """
    from .layout_rewrite import FluidMLLayout

    if apply is None:
        apply = getattr(options, "cost", "measured") == "measured"
    return [FluidMLLayout(target, options, apply=apply, explicit_transforms=False)]


def memory_stage(target, options) -> list:
    """Passes of the memory slot (StaticPlanBlockMemory's); empty keeps the stock planner."""
    from .memory_plan import FluidMLMemoryPlan

    return [FluidMLMemoryPlan(verify=options.verify)]
