"""The layout stage (FLUIDML.md sections 1-4): front door :mod:`.stage`.

``graph`` (operator graph, sequences) -> ``dp`` (DP per sequence) -> ``vote`` (conflict voting,
refinement) under ``cost`` / ``measure`` / ``learned`` cost models -> ``rewrite`` (the IR in the
chosen layouts, kernels from ``kernels``); ``layouts`` is the layout algebra, ``conv`` the
convolution layouts, ``gain`` the plan ids and their measured end-to-end gains.
"""

from .stage import FluidMLLayout, explain, layout_passes, report

__all__ = ["FluidMLLayout", "explain", "layout_passes", "report"]
