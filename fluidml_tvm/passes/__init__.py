"""FluidML Relax passes, one per file.

``layout_stage`` and ``memory_stage`` return the pass lists the pipeline puts in its layout and
memory slots (an empty list: that stage has nothing to run yet).
"""


def layout_stage(target, options) -> list:
    """Passes of the layout slot (before legalization): FluidML layout selection + rewrite.

    The whole plan and its reasons are always computed and recorded; the pipeline applies only
    layouts that kernels absorb (transposes removed, none inserted): measured end to end, plans
    with explicit transforms did not run faster (see layout_rewrite.FluidMLLayout).
    """
    from .layout_rewrite import FluidMLLayout

    return [FluidMLLayout(target, options, explicit_transforms=False)]


def memory_stage(target, options) -> list:
    """Passes of the memory slot (StaticPlanBlockMemory's); empty keeps the stock planner."""
    from .memory_plan import FluidMLMemoryPlan

    return [FluidMLMemoryPlan(verify=options.verify)]
