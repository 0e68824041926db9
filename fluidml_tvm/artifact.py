"""What a compile produces: :class:`CompiledModel` (the executable, its metadata, the decisions
behind it) and :meth:`CompiledModel.export` (the library, its metadata JSON and, with external
weights, the weights file)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .decisions import render
from .errors import FluidMLError
from .options import Options
from .pipeline import DECISION_STAGES
from .runtime.metadata import metadata_path
from .runtime.weights import weights_path

METADATA_VERSION = 1


@dataclass
class CompiledModel:
    """The result of :func:`compile`; :meth:`export` writes the library and its metadata."""

    executable: object
    target: object
    inputs: list
    outputs: list
    options: Options
    source: str
    cross_compiler: str | None = None
    planned_memory: dict | None = None
    memory_bound: dict | None = None
    memory_timeline: list | None = None
    pass_times: dict = field(default_factory=dict)
    compile_seconds: float = 0.0
    folding: str = ""
    weights: list | None = None  # [(name, numpy array)] when weights live outside the library
    gathered_weights: tuple = ()  # names of weights read only as gather tables (embeddings)
    decisions: dict = field(default_factory=dict)  # stage -> [Decision] (fluidml_tvm.decisions)
    timing: dict = field(default_factory=dict)  # step -> seconds (--timing)
    tuning: dict = field(default_factory=dict)  # the tune budget's account (TuneSession.snapshot)
    host_peak: dict | None = None  # {"gflops", "gbps"} measured here (fluidml_tvm.roofline)

    def kernels(self) -> dict:
        """Per scheduled kernel: its rule, work (flops, bytes) and, where candidates were timed
        at compile time, the seconds of the chosen one (the roofline view's data)."""
        out = {}
        for d in self.decisions.get("schedule") or []:
            if "flops" in d.data:
                out[d.subject] = {"rule": d.choice, "flops": d.data["flops"],
                                  "bytes": d.data["bytes"], "seconds": d.data.get("seconds", 0.0)}
        return out

    def roofline(self) -> str:
        """The report's roofline section: host peaks, the conv/matmul kernels timed at compile
        time with their share of the roofline, and a warning for each below 30%."""
        from .roofline import fraction, is_compute_kernel, rates, warning

        if not self.host_peak:
            return ("host peak not measured (a cross-compiled library, fluidml.cost other than "
                    "measured, fluidml=0, or a tune budget spent before it: the next compile "
                    "measures it): fluidml-tvm run --profile shows kernel times")
        peak = self.host_peak
        lines = [f"host peak: {peak['gflops']:.1f} GFLOP/s fp32, {peak['gbps']:.1f} GB/s"]
        warn, untimed = [], 0
        for name, rec in sorted(self.kernels().items()):
            if not is_compute_kernel(name, rec["rule"]):
                continue
            if not rec["seconds"]:
                untimed += 1
                continue
            gflops, _ = rates(rec, rec["seconds"])
            frac = fraction(rec, rec["seconds"], peak)
            lines.append(f"{name}: {rec['rule']}, {gflops:.1f} GFLOP/s, "
                         f"{frac:.0%} of the roofline" if frac is not None else name)
            w = warning(name, rec, rec["seconds"], peak)
            if w:
                warn.append(w)
        if untimed:
            lines.append(f"{untimed} conv/matmul kernels not timed at compile time (cached "
                         "elsewhere or analytic): fluidml-tvm run --profile times them all")
        return "\n".join(lines + warn)

    def report(self) -> str:
        """Every decision the optimizer recorded: layouts, schedules, memory (``--report``)."""
        parts = [f"# fluidml-tvm report: {self.source} ({self.options.describe()})"]
        for stage in DECISION_STAGES:
            if stage == "memory":
                continue
            found = self.decisions.get(stage)
            if stage == "layout_verify" and not found:
                continue
            text = render(found) if found else "(stage off or nothing recorded)"
            parts.append(f"## {stage}\n{text}")
        mem = [render(self.decisions["memory"])] if self.decisions.get("memory") else []
        for name, planned in (self.planned_memory or {}).items():
            bound = (self.memory_bound or {}).get(name)
            mem.append(f"{name}: planned {planned} bytes, live-set lower bound {bound} bytes")
        parts.append("## memory\n" + ("\n".join(mem) or "(no plan recorded)"))
        parts.append("## roofline\n" + self.roofline())
        if self.weights is not None:
            total = sum(a.nbytes for _, a in self.weights)
            parts.append(f"## weights\n{len(self.weights)} tensors, {total} bytes, stored "
                         "beside the library (fluidml.weights)")
        return "\n\n".join(parts) + "\n"

    def metadata(self) -> dict:
        return {
            "format": "fluidml-tvm",
            "version": METADATA_VERSION,
            "source": self.source,
            "target": _to_plain(self.target.export()),
            "target_kind": self.target.kind.name,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "options": self.options.to_dict(),
            "pipeline": self.options.describe(),
            "planned_memory_bytes": self.planned_memory,
            "host_peak": self.host_peak,
            "kernels": self.kernels(),
            "live_set_lower_bound_bytes": self.memory_bound,
            "compile_seconds": round(self.compile_seconds, 3),
            "shape_folding": self.folding,
            "weights": None if self.weights is None else {
                "count": len(self.weights),
                "bytes": int(sum(a.nbytes for _, a in self.weights)),
            },
        }

    def export(self, path: str, cross_compiler: str | None = None) -> str:
        """Write the shared library to ``path`` and metadata beside it; returns ``path``."""
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FluidMLError(f"output directory does not exist: {parent}")
        cc = cross_compiler or self.cross_compiler
        kwargs = {}
        if cc:
            import shutil

            import tvm.support.cc

            if shutil.which(cc) is None:
                raise FluidMLError(
                    f"cross compiler {cc!r} not found on PATH (on Debian/Ubuntu: "
                    "apt-get install gcc-aarch64-linux-gnu), or pass --cross-compiler"
                )
            kwargs["fcompile"] = tvm.support.cc.cross_compiler(cc)
        tmp = path + ".tmp.so"
        try:
            self.executable.export_library(tmp, **kwargs)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        meta = self.metadata()
        meta["cross_compiler"] = cc
        if self.weights is not None:
            from .runtime.weights import write_weights

            wpath = weights_path(path)
            meta["weights"]["file"] = os.path.basename(wpath)
            meta["weights"]["index"] = write_weights(wpath, self.weights,
                                                     gathered=self.gathered_weights)
        with open(metadata_path(path), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        return path

    def load(self, device=None, num_threads=None):
        """A runnable model in this process (host targets only), without writing ``export``'s
        files: the VM runs a copy exported to a temporary directory. A VM started on
        :attr:`executable` itself would change it (TVM 0.27 records an empty memory scope per
        constant), and a later :meth:`export` would then print "Scope Saving" per constant and
        every load of the library "Scope Loaded"."""
        import shutil
        import tempfile

        import tvm

        from .runtime import Model

        tmp = tempfile.mkdtemp(prefix="fluidml-tvm-load-")
        try:
            path = os.path.join(tmp, "model.so")
            self.executable.export_library(path)
            lib = tvm.runtime.load_module(path)  # mapped: the file may go
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Model.from_executable(lib, self.metadata(), device, num_threads,
                                     weights=self.weights)


def _to_plain(obj):
    """A target's ``export()`` (FFI maps, arrays, nested targets) as plain JSON values."""
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if hasattr(obj, "export"):  # a nested Target (the host)
        return _to_plain(obj.export())
    if hasattr(obj, "__iter__"):
        return [_to_plain(v) for v in obj]
    return str(obj)
