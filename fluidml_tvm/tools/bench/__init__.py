"""The measuring instrument: FluidML vs stock TVM vs ONNX Runtime, latency and memory.

Behind ``fluidml-tvm benchmark`` and ``benchmarks/run_zoo.py``: :mod:`.suite` orchestrates (one
fresh process per engine and round), :mod:`.worker` is the measuring process
(``python -m fluidml_tvm.tools.bench MODE ARGS.json RESULT.json``), :mod:`.report` writes the
markdown table and the plots.

Method (benchmarks/README.md says the same for readers):

- every engine runs in its own fresh process with the same thread count (``TVM_NUM_THREADS`` and
  ONNX Runtime's ``intra_op_num_threads``), on the same seeded inputs;
- TVM engines are compiled once in a separate process (compile time), exported, then loaded by
  the run process with the runtime alone (``fluidml_tvm.load``: ``tvm_ffi`` and
  ``libtvm_runtime.so``, no compiler), as ``fluidml-tvm run`` and a board do;
- each run process warms up, then times runs; the rounds of all engines are interleaved (engine
  order rotated each round) so machine drift hits all of them; the median over all samples is
  reported with min and max. A run process stops sampling once it has spent ``budget`` seconds
  (stock TVM takes seconds per run), after at least one timed run;
- peak activation memory is measured over the same run for every engine, the first after loading
  (the one that allocates what the model needs), as the growth of glibc's ``mallinfo2``
  (``uordblks + hblkhd``) over the heap just before it (outputs included): TVM with
  ``memory_cfg="naive"`` (no pooling), sampled before and after every kernel call through
  ``vm.set_instrument``; ONNX Runtime at the end of the run (its arena keeps what the run needed).
  TVM's second run is recorded beside it (``peak_activation_bytes_second_run``);
- every results file records the commit of the checkout (``git describe``, ``+dirty``), the
  pass-config and options of each engine, the host (CPU model, ISA, LLVM's CPU name), the
  threads, and the load average before and after the suite;
- whole-process peak RSS comes from one more fresh process per engine and round that only
  runs the model as a user does (:mod:`.rss`): ``fluidml-tvm run LIB --inputs ... --repeat N``
  for the TVM engines, an ``InferenceSession`` run ``N + 1`` times for ONNX Runtime; its
  ``ru_maxrss`` (``VmHWM``) from ``wait4``;
- planned activation memory comes from the IR after the planner, with the live-set lower bound.
"""

from .report import markdown_table, plots
from .rss import peak_rss
from .suite import ENGINES, benchmark_model, host_info, run_suite
from .worker import heap_bytes, peak_rss_bytes, worker_main

__all__ = [
    "ENGINES",
    "benchmark_model",
    "heap_bytes",
    "host_info",
    "markdown_table",
    "peak_rss",
    "peak_rss_bytes",
    "plots",
    "run_suite",
    "worker_main",
]
