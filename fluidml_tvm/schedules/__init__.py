"""TensorIR schedule rules for CPU targets, one operator family per file.

``schedule_stage(target, options)`` returns the passes of the pipeline's schedule slot (run after
FuseTIR, inside ``with target:``): one :class:`FluidMLSchedule`.
"""

from .fluidml_schedule import Decision, FluidMLSchedule, report
from .target_info import CPUInfo, cpu_info, host_target


def schedule_passes(target, options) -> list:
    """Passes of the schedule slot: :class:`FluidMLSchedule` for CPU (llvm) targets."""
    return [FluidMLSchedule(target, options)]


__all__ = [
    "CPUInfo",
    "Decision",
    "FluidMLSchedule",
    "cpu_info",
    "host_target",
    "report",
    "schedule_passes",
]
