"""TensorIR schedules for CPU targets: the pipeline's schedule stage.

* :mod:`.stage` - the front door: :class:`FluidMLSchedule` and :func:`schedule_passes` (the
  passes of the pipeline's schedule slot, run after FuseTIR inside ``with target:``);
* :mod:`.rules` - one rule per operator family, tried in the order of ``rules.RULES``;
* :mod:`.choose` - which candidate a measuring rule takes (cache, timing, analytic);
* :mod:`.constants` - which ``call_tir`` arguments are constants, packing them;
* :mod:`.measure`, :mod:`.target_info`, :mod:`.fast_math`, :mod:`.common` - timing kernels,
  the target's vector facts, vectorizable erf/exp, helpers the rules share;
* :mod:`.gpu` - the GPU targets' schedule passes (TVM's dlight rules).
"""

from .stage import FluidMLSchedule, schedule_passes
from .target_info import CPUInfo, cpu_info, host_target

__all__ = [
    "CPUInfo",
    "FluidMLSchedule",
    "cpu_info",
    "host_target",
    "schedule_passes",
]
