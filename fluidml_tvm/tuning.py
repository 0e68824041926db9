"""The tuning session of one compile: the measuring budget, what was measured, which entries of
the measurement database the compile used, and the progress line on stderr.

``fluidml.tune_budget`` (``--tune-budget SECONDS``) is the wall time a compile may spend
measuring, for the whole model: schedule candidates (:mod:`fluidml_tvm.schedules.choose`),
layout variants (:mod:`fluidml_tvm.passes.layout.measure`) and the end-to-end check of a new
layout plan (:mod:`fluidml_tvm.layout_verify`). What the budget does not reach is decided by the
analytic model (the rules' best guess first), and the decisions say so. ``-1`` is no limit,
``0`` measures nothing (cached choices are still used).

The default, ``auto`` (:data:`AUTO`), sizes the budget to the model: :data:`AUTO_BASE` seconds
plus :data:`AUTO_PER_GB` a GB of weights, at most :data:`AUTO_MAX` (:meth:`TuneSession.size_to`).
The reason is issue 14's bar, a cold compile within 3x of stock TVM's: stock TVM compiles a small
model in 3-8 s on the 2-core host (a 15 s budget made squeezenet's and whisper-tiny's cold compiles
5-6x stock), and its compile time grows with the weights it folds and exports (VGG-11, BERT-base:
24-27 s), as does what measuring a big model's kernels costs and gains.

One :class:`TuneSession` is active per compile (:func:`current`, entered with
:meth:`TuneSession.activate` by :func:`fluidml_tvm.compile`); a stage run from a user's own TVM
flow without one makes its own from its options. Spending:

* :meth:`TuneSession.measuring` wraps one measurement; only the outermost block charges its wall
  time (a layout variant's nested schedule choice is part of the variant's measurement), and
  :meth:`TuneSession.available` counts an open block's elapsed time as spent;
* :meth:`TuneSession.share` caps what a stage may take (the layout stage's variants take at most
  :data:`LAYOUT_SHARE`), :meth:`TuneSession.reserve` keeps seconds for later (a layout plan's
  check) that other measurements may not take;
* :meth:`TuneSession.estimate` predicts a measurement's cost from the seconds per candidate seen
  so far, so a kernel that no longer fits is left to the analytic model rather than started.

:meth:`TuneSession.use` records every cost-database entry the compile read or wrote
(``--save-tuning-records``, :mod:`fluidml_tvm.records`).
"""

from __future__ import annotations

import contextlib
import sys
import time

UNBOUNDED = -1
# fluidml.tune_budget=auto (the default): AUTO_BASE s plus AUTO_PER_GB s a GB of weights, at most
# AUTO_MAX s (see the module docstring).
AUTO = -2
AUTO_BASE = 5.0
AUTO_PER_GB = 20.0
AUTO_MAX = 30.0
# The share of a bounded budget the layout stage may spend measuring layout variants (it runs
# first). A layout the budget does not reach stays the default, and for conv nets that is what
# costs most: squeezenet, 5 s budget, 2-core host: 25% for layouts measured no variant and ran
# 4.5 ms, 60% measured 30 of 40 nodes and ran 3.6 ms (every layout measured, no limit: 2.95 ms);
# a schedule the budget does not reach takes the rule's analytic first choice, which loses less
# (ResNet-50's convs: 15% of their time against measuring all candidates).
LAYOUT_SHARE = 0.6
#: the share of the budget the layout stage keeps for the end-to-end check of a plan it applies
#: that nothing has measured yet (:func:`fluidml_tvm.compile`; the schedule stage may not take it)
LAYOUT_CHECK_SHARE = 0.25
# Seconds per timed candidate before any was measured (build + a few timing rounds; measured on
# the 2-core host: schedule candidates 0.1-0.4 s, big convolutions more; layout variants
# 0.1-0.15 s: squeezenet's 34 in 3.8 s).
FIRST_GUESS = {"schedule": 0.3, "layout": 0.15}
# Seconds per parameter byte a timed candidate also costs: its random inputs (uniform float32 and
# the copy to a tensor: ~1.5 ns a byte on the 2-core host, 64 MB in 0.1 s).
ARG_SECONDS_PER_BYTE = 2e-9

_ACTIVE: list[TuneSession] = []


def current() -> TuneSession | None:
    """The session of the compile in progress (None outside :meth:`TuneSession.activate`)."""
    return _ACTIVE[-1] if _ACTIVE else None


def for_options(options) -> TuneSession:
    """The active session, else a new one from ``options`` (a stage in a user's TVM flow)."""
    return current() or TuneSession(options.tune_budget, retune=options.retune)


def keep_for_layout_check(options, here: bool) -> None:
    """The layout stage applies a plan nothing has measured end to end: keep
    :data:`LAYOUT_CHECK_SHARE` of the active session's budget for its check where it runs
    (``here``: :func:`fluidml_tvm.schedules.measure.measures_here`; :func:`fluidml_tvm.compile`
    times the build against one without the plan)."""
    session = current()
    if session is not None and here and options.layout_verify and options.cost == "measured":
        session.reserve("layout check", LAYOUT_CHECK_SHARE * session.budget)


class TuneSession:
    """Budget, counters and used cache entries of one compile (see the module docstring).

    Parameters
    ----------
    budget
        Seconds of measuring; :data:`UNBOUNDED` no limit, ``0`` nothing measured, :data:`AUTO`
        sized to the model (:data:`AUTO_BASE` until :meth:`size_to` is told its weights).
    retune
        Measure again (within the budget) what the cache holds only from a loaded machine.
    progress
        A stream for the progress line (None: silent; the ``fluidml_tvm`` logger still logs).
    """

    def __init__(self, budget: float = UNBOUNDED, retune: bool = False, progress=None):
        self.auto = budget == AUTO
        self.budget = AUTO_BASE if self.auto else float(budget)
        self.retune = retune
        self.stream = progress
        self.spent = 0.0
        self.reserved: dict[str, float] = {}
        self.caps: list[float] = []  # spent-time limits of the open shares
        self._open: list[float] = []  # start times of the open measuring blocks
        # per kind (schedule, layout, verify): kernels measured, candidates timed, seconds
        self.stats: dict[str, list] = {}
        self.skipped: dict[str, int] = {}  # kind -> kernels left to the model by the budget
        # kind -> [modelled seconds of the kernels measured, of all that were worth measuring]
        self.coverage: dict[str, list] = {}
        self.used: set[tuple] = set()  # (table, target, rule, workload) read or written
        self._per_candidate: dict[str, list[float]] = {}
        self._line = False
        # compiled kernels (fluidml_tvm.kernel_cache): taken from the cache, built
        self.kernels = {"found": 0, "built": 0}

    # -- the budget ------------------------------------------------------------------------------
    def size_to(self, weight_bytes: int) -> None:
        """An ``auto`` budget for a model with ``weight_bytes`` of weights (a set budget stays)."""
        if self.auto:
            self.budget = min(AUTO_MAX, AUTO_BASE + AUTO_PER_GB * weight_bytes / 1e9)

    def describe_budget(self) -> str:
        if self.unbounded:
            return "no limit"
        return f"{self.budget:.0f} s" + (" (auto)" if self.auto else "")

    @property
    def unbounded(self) -> bool:
        return self.budget < 0

    @property
    def revisits(self) -> bool:
        """Whether this session measures what an earlier compile's budget left unmeasured (a
        schedule left to the model, a layout node or plan left unchecked): with ``--retune`` or
        no budget limit; otherwise such a decision stands, so a warm compile measures nothing."""
        return self.retune or self.unbounded

    def spent_now(self) -> float:
        """Seconds spent, an open measurement's elapsed time included."""
        return self.spent + (time.perf_counter() - self._open[0] if self._open else 0.0)

    def left(self) -> float:
        return float("inf") if self.unbounded else max(0.0, self.budget - self.spent_now())

    def available(self) -> float:
        """What a measurement may still take: the budget left, less the reserves, within the
        open shares."""
        if self.unbounded:
            return float("inf")
        out = self.left() - sum(self.reserved.values())
        for cap in self.caps:
            out = min(out, cap - self.spent_now())
        return max(0.0, out)

    def affords(self, seconds: float) -> bool:
        return self.unbounded or self.available() >= seconds

    def estimate(self, candidates: int, kind: str = "schedule", nbytes: int = 0) -> float:
        """Predicted seconds to time ``candidates`` candidates of ``kind`` whose parameters
        take ``nbytes``: per candidate, the median of the measurements so far (their share
        that does not grow with the bytes), plus :data:`ARG_SECONDS_PER_BYTE` a byte."""
        seen = sorted(self._per_candidate.get(kind, ()))
        per = seen[len(seen) // 2] if seen else FIRST_GUESS.get(kind, 0.3)
        return (per + nbytes * ARG_SECONDS_PER_BYTE) * max(1, candidates)

    @contextlib.contextmanager
    def share(self, fraction: float):
        """Within the block, measurements take at most ``fraction`` of the budget."""
        if self.unbounded:
            yield
            return
        self.caps.append(self.spent_now() + fraction * self.budget)
        try:
            yield
        finally:
            self.caps.pop()

    def reserve(self, what: str, seconds: float) -> None:
        """Keep ``seconds`` of the budget for ``what`` (``release`` gives them back)."""
        if not self.unbounded:
            self.reserved[what] = max(0.0, min(seconds, self.left()))

    def release(self, what: str) -> float:
        return self.reserved.pop(what, 0.0)

    @contextlib.contextmanager
    def measuring(self, kind: str, kernels: int = 1, candidates: int = 0, nbytes: int = 0):
        """One measurement of ``kind`` (schedule, layout, verify) of ``kernels`` kernels and
        ``candidates`` timed candidates of ``nbytes`` parameter bytes; only the outermost block
        counts, and charges its wall time to the budget."""
        t0 = time.perf_counter()
        outer = not self._open  # a nested block is part of the outer one's measurement
        self._open.append(t0)
        try:
            yield
        finally:
            self._open.pop()
            if outer:
                dt = time.perf_counter() - t0
                row = self.stats.setdefault(kind, [0, 0, 0.0])
                row[0] += kernels
                row[1] += candidates
                row[2] += dt
                self.spent += dt
                if candidates:
                    per = dt / candidates - nbytes * ARG_SECONDS_PER_BYTE
                    self._per_candidate.setdefault(kind, []).append(max(0.01, per))

    @property
    def nested(self) -> bool:
        """Inside a measurement (a layout variant's own schedule choice)."""
        return bool(self._open)

    def skip(self, kind: str, n: int = 1) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + n

    def cover(self, kind: str, measured: float, total: float) -> None:
        """Account a kernel's modelled run time: ``measured`` of its ``total`` was measured."""
        row = self.coverage.setdefault(kind, [0.0, 0.0])
        row[0] += measured
        row[1] += total

    def covered(self, kind: str) -> float | None:
        """The share of the modelled run time of the kernels worth measuring that was measured
        now (None: nothing was to measure)."""
        m, t = self.coverage.get(kind, (0.0, 0.0))
        return m / t if t > 0 else None

    def measured_candidates(self, kind: str | None = None) -> int:
        kinds = [kind] if kind else list(self.stats)
        return sum(self.stats.get(k, [0, 0, 0.0])[1] for k in kinds)

    # -- records ---------------------------------------------------------------------------------
    def use(self, table: str, target: str, rule: str, workload: str) -> None:
        self.used.add((table, target, rule, workload))

    # -- progress --------------------------------------------------------------------------------
    def progress(self, done: int, total: int, text: str = "") -> None:
        """``tuning 3/12 kernels, 14 s of the 30 s budget left: TEXT``: one overwritten line on
        a terminal, plain lines otherwise."""
        if self.stream is None or self.nested:
            return
        left = "no budget limit" if self.unbounded else \
            f"{self.left():.0f} s of the {self.describe_budget()} budget left"
        line = f"[fluidml-tvm]   tuning {done}/{total} kernels, {left}"
        line += f": {text}" if text else ""
        if _isatty(self.stream):
            self.stream.write("\r" + line[:110].ljust(110))
            self._line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_progress(self) -> None:
        if self._line and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._line = False

    def summary(self) -> str:
        """One line: what was measured and what the budget left to the model."""
        parts = []
        for kind, (kernels, cands, secs) in sorted(self.stats.items()):
            parts.append(f"{kind}: {kernels} kernels, {cands} candidates timed, {secs:.1f} s")
        text = f"tune budget {self.describe_budget()}, spent {self.spent:.1f} s"
        text += ("; " + "; ".join(parts)) if parts else "; nothing measured"
        left = {"schedule": "kernels decided by the analytic model",
                "layout": "layout nodes kept in the default layouts",
                "verify": "layout plan applied without its end-to-end check"}
        for kind, n in sorted(self.skipped.items()):
            text += f"; {n} {left.get(kind, kind)} (budget)"
        share = self.covered("schedule")
        if share is not None and share < 1:
            text += (f"; the schedules measured cover {share:.0%} of the modelled run time of "
                     "the kernels left to measure")
        return text

    def snapshot(self) -> dict:
        """The session's numbers as plain data (a compiled model keeps them)."""
        return {"budget_s": self.budget, "auto": self.auto, "spent_s": round(self.spent, 3),
                "measuring": {k: {"kernels": v[0], "candidates": v[1], "seconds": round(v[2], 3)}
                              for k, v in self.stats.items()},
                "left_to_model": dict(self.skipped),
                "covered": {k: round(self.covered(k), 4) for k in self.coverage
                            if self.covered(k) is not None},
                "kernel_cache": dict(self.kernels)}

    @contextlib.contextmanager
    def activate(self):
        """Make this the :func:`current` session inside the block."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)
            self.end_progress()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stderr_if(progress: bool):
    return sys.stderr if progress else None
