"""The memory stage (FLUIDML.md section 6 and beyond): front door :mod:`.stage`.

``lifetimes`` (who lives when) -> ``order`` (memory-aware execution orders) -> ``inplace``
(elementwise outputs over dying inputs) -> ``pack`` (offsets in an arena) -> ``plan`` (one
function) -> ``stage`` (the pass); ``verify`` is the independent checker of any plan.
"""

from .stage import FluidMLMemoryPlan, memory_passes

__all__ = ["FluidMLMemoryPlan", "memory_passes"]
