"""Observability of a compile: progress per stage, per-pass timing, IR printing and dumps.

All are TVM pass instruments, so they see every pass of the pipeline, FluidML's and TVM's alike.
"""

from __future__ import annotations

import os
import re
import sys
import time

import tvm


def _script(mod) -> str:
    return mod.script(show_meta=False)


@tvm.ir.instrument.pass_instrument
class StageProgress:
    """Prints ``[fluidml-tvm] stage NAME ... 1.2 s`` for each pipeline stage (to stderr)."""

    def __init__(self, stream=None, prefix="[fluidml-tvm]"):
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.start = {}

    def run_before_pass(self, mod, info):
        if info.name.startswith("fluidml."):
            self.start[info.name] = time.perf_counter()
            print(f"{self.prefix}   {info.name[8:]:<9} ...", file=self.stream, flush=True)

    def run_after_pass(self, mod, info):
        if info.name in self.start:
            dt = time.perf_counter() - self.start.pop(info.name)
            print(f"{self.prefix}   {info.name[8:]:<9} done in {dt:.2f} s", file=self.stream,
                  flush=True)


@tvm.ir.instrument.pass_instrument
class PassTimes:
    """Wall time of every pass (nested passes counted inside their parents too)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._stack = []

    def run_before_pass(self, mod, info):
        self._stack.append((info.name, time.perf_counter()))

    def run_after_pass(self, mod, info):
        name, t0 = self._stack.pop()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def table(self, top: int = 15) -> str:
        rows = sorted(self.times.items(), key=lambda kv: -kv[1])[:top]
        return "\n".join(f"  {t:8.3f} s  {n}" for n, t in rows)


@tvm.ir.instrument.pass_instrument
class PhaseTimes:
    """Wall time of each named phase (the pipeline's ``fluidml.*`` stages) and when the last
    one ended: what follows inside ``tvm.compile`` is code generation."""

    def __init__(self, names):
        self.names = tuple(names)
        self.times: dict[str, float] = {}
        self.last_end: float | None = None
        self._start: dict[str, float] = {}

    def run_before_pass(self, mod, info):
        if info.name in self.names:
            self._start[info.name] = time.perf_counter()

    def run_after_pass(self, mod, info):
        if info.name in self._start:
            self.last_end = time.perf_counter()
            dt = self.last_end - self._start.pop(info.name)
            self.times[info.name] = self.times.get(info.name, 0.0) + dt


def timing_table(times: dict, tuning: dict | None = None, passes: dict | None = None,
                 top: int = 8) -> str:
    """``--timing``: where a compile's time went. ``times``: ``{"import": s, "stage NAME": s,
    "codegen": s, "layout check": s, "export": s, ...}`` in order; ``tuning``: a
    :meth:`fluidml_tvm.tuning.TuneSession.snapshot` (measuring per kind); ``passes``: per-pass
    times (the slowest ``top`` are listed)."""
    tuning = tuning or {}
    stats = tuning.get("measuring", {})
    skipped = tuning.get("left_to_model", {})
    where = {"stage layout": "layout", "stage schedule": "schedule", "layout check": "verify"}
    rows = ["[fluidml-tvm] where the compile time went:"]
    for name, secs in times.items():
        line = f"  {name:<16} {secs:8.2f} s"
        kind = where.get(name)
        if kind in stats:
            m = stats[kind]
            what = "variants" if kind == "layout" else "candidates"
            line += (f"   measuring {m['seconds']:.2f} s: {m['kernels']} kernels, "
                     f"{m['candidates']} {what} timed")
        if skipped.get(kind):
            line += f", {skipped[kind]} left to the analytic model (budget)"
        k = tuning.get("kernel_cache") or {}
        if name == "codegen" and k.get("found", 0) + k.get("built", 0):
            line += f"   kernels: {k['found']} from the cache, {k['built']} built"
        rows.append(line)
    rows.append(f"  {'total':<16} {sum(times.values()):8.2f} s")
    if tuning:
        budget = tuning["budget_s"]
        shown = "no limit" if budget < 0 else f"{budget:.0f} s"
        shown += " (auto)" if tuning.get("auto") and budget >= 0 else ""
        line = f"  tune budget {shown}, measuring took {tuning['spent_s']:.1f} s"
        covered = tuning.get("covered", {}).get("schedule")
        if covered is not None:
            line += (f"; measured schedules cover {covered:.0%} of the modelled run time of the "
                     "kernels worth measuring")
        rows.append(line)
    if passes:
        rows.append("  slowest passes (nested passes counted in their parents too):")
        for n, t in sorted(passes.items(), key=lambda kv: -kv[1])[:top]:
            rows.append(f"    {t:8.3f} s  {n}")
    return "\n".join(rows)


@tvm.ir.instrument.pass_instrument
class CaptureAfter:
    """Keeps the module as it was right after the last pass named in ``names``."""

    def __init__(self, names):
        self.names = set(names)
        self.mod = None
        self.after = None

    def run_after_pass(self, mod, info):
        if info.name in self.names:
            self.mod, self.after = mod, info.name


@tvm.ir.instrument.pass_instrument
class PrintIRAfter:
    """``--print-ir-after NAME``: print the IR after every pass called NAME."""

    def __init__(self, names, stream=None):
        self.names = set(names)
        self.seen = set()
        self.stream = stream or sys.stdout

    def run_after_pass(self, mod, info):
        if info.name in self.names:
            self.seen.add(info.name)
            print(f"# IR after {info.name}\n{_script(mod)}", file=self.stream, flush=True)


@tvm.ir.instrument.pass_instrument
class DumpIR:
    """``--dump-ir DIR``: write ``NN-<pass>.py`` after each pipeline stage and each top pass."""

    def __init__(self, directory, names):
        self.directory = directory
        self.names = set(names)
        self.count = 0
        os.makedirs(directory, exist_ok=True)

    def run_after_pass(self, mod, info):
        if info.name in self.names:
            self.count += 1
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", info.name)
            path = os.path.join(self.directory, f"{self.count:02d}-{safe}.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(_script(mod))


@tvm.ir.instrument.pass_instrument
class CaptureDecisions:
    """Keep the decisions FluidML's stages leave on the module (:mod:`fluidml_tvm.decisions`):
    read after every ``fluidml.*`` phase, the latest per stage wins."""

    def __init__(self, stages):
        self.stages = tuple(stages)
        self.decisions: dict = {}

    def run_after_pass(self, mod, info):
        if not info.name.startswith("fluidml.") or mod.attrs is None:
            return
        from .decisions import from_module

        for stage in self.stages:
            found = from_module(mod, stage)
            if found is not None:
                self.decisions[stage] = found
