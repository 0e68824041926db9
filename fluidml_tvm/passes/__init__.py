"""FluidML Relax passes, one per file.

``layout_stage`` and ``memory_stage`` return the pass lists the pipeline puts in its layout and
memory slots (an empty list: that stage has nothing to run yet).
"""


def layout_stage(target, options, apply=None) -> list:
    """Passes of the layout slot (before legalization): FluidML layout selection.

    The plan and the reason for every decision are always computed and left in the module
    attribute ``fluidml.layout_report``. Rewriting is off by default: measured end to end (same
    process, interleaved, BERT/GPT-NeoX tiny and base, 2 threads), the layouts kernels absorb
    did not lower latency beyond noise. ``apply=True`` (or an ``options.layout_apply`` field, if
    the options grow one) applies the layouts kernels absorb (transposes removed, none inserted).
    """
    from .layout_rewrite import FluidMLLayout

    if apply is None:
        apply = bool(getattr(options, "layout_apply", False))
    return [FluidMLLayout(target, options, apply=apply, explicit_transforms=False)]


def memory_stage(target, options) -> list:
    """Passes of the memory slot (StaticPlanBlockMemory's); empty keeps the stock planner."""
    from .memory_plan import FluidMLMemoryPlan

    return [FluidMLMemoryPlan(verify=options.verify)]
