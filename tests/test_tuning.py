"""The tuning session (tuning.py): the budget's account (shares, reserves, nested measurements),
the estimate of the next measurement, and the progress line (one updating line on a terminal,
plain lines otherwise)."""

from __future__ import annotations

import io
import time

import pytest

from fluidml_tvm import tuning
from fluidml_tvm.options import Options
from fluidml_tvm.tuning import TuneSession


def test_measurements_charge_the_budget_and_nested_ones_count_once():
    s = TuneSession(10)
    assert s.left() == 10 and s.affords(10) and not s.affords(10.5)
    with s.measuring("layout", kernels=2, candidates=2):
        time.sleep(0.05)
        assert s.nested and s.left() < 10  # an open measurement counts as spent
        with s.measuring("schedule", kernels=1, candidates=3):  # a variant's own schedule
            time.sleep(0.05)
    assert "schedule" not in s.stats  # inside the layout measurement, not beside it
    kernels, cands, secs = s.stats["layout"]
    assert (kernels, cands) == (2, 2) and 0.1 <= secs == s.spent < 1.0
    assert s.estimate(4, "layout") == pytest.approx(4 * secs / 2)  # per candidate seen so far
    assert s.estimate(4) == 4 * tuning.FIRST_GUESS["schedule"]  # nothing of that kind yet


def test_shares_and_reserves_limit_what_is_available():
    s = TuneSession(20)
    with s.share(0.25):
        assert s.available() == pytest.approx(5, abs=0.01)
    s.reserve("verify", 8)
    assert s.available() == pytest.approx(12, abs=0.01) and s.left() == pytest.approx(20, abs=0.01)
    assert s.release("verify") == 8 and s.available() == pytest.approx(20, abs=0.01)
    unbounded, nothing = TuneSession(-1), TuneSession(0)
    with unbounded.share(0.25):
        assert unbounded.affords(1e9) and unbounded.left() == float("inf")
    assert not nothing.affords(0.01) and nothing.available() == 0


def test_the_active_session_is_the_compiles(monkeypatch):
    opts = Options(tune_budget=7, retune=True)
    own = tuning.for_options(opts)
    assert tuning.current() is None and own.budget == 7 and own.retune
    s = TuneSession(3)
    with s.activate():
        assert tuning.current() is s and tuning.for_options(opts) is s
    assert tuning.current() is None


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_one_updating_line_on_a_terminal_plain_lines_otherwise():
    tty, log = _Tty(), io.StringIO()
    for stream in (tty, log):
        s = TuneSession(30, progress=stream)
        with s.activate():
            s.progress(0, 3, "measuring fused_matmul")
            s.progress(3, 3, "done")
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n")
    assert "tuning 0/3 kernels, 30 s of the 30 s budget left: measuring fused_matmul" in \
        tty.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[1].startswith("[fluidml-tvm]   tuning 3/3 kernels")
    quiet = TuneSession(30)  # no stream: silent
    quiet.progress(1, 2)


def test_summary_and_snapshot_say_what_was_measured_and_left():
    s = TuneSession(20)
    with s.measuring("schedule", kernels=1, candidates=4):
        pass
    s.skip("schedule", 3)
    text = s.summary()
    assert "tune budget 20 s" in text and "schedule: 1 kernels, 4 candidates timed" in text
    assert "3 kernels decided by the analytic model (budget)" in text
    s.skip("layout", 2)
    assert "2 layout nodes kept in the default layouts (budget)" in s.summary()
    snap = s.snapshot()
    assert snap["measuring"]["schedule"]["candidates"] == 4 and snap["left_to_model"] == {
        "schedule": 3, "layout": 2}
    assert TuneSession(-1).summary().startswith("tune budget no limit")


def test_the_estimate_grows_with_the_kernels_bytes():
    """A timed candidate also costs its random inputs: VGG-11's classifier (411 MB of weight)
    took 14 s for 3 candidates, almost all of it making inputs."""
    s = TuneSession(20)
    small, big = s.estimate(3), s.estimate(3, nbytes=411_000_000)
    assert big > small + 3 * 411_000_000 * tuning.ARG_SECONDS_PER_BYTE * 0.99
    with s.measuring("schedule", kernels=1, candidates=2, nbytes=100_000_000):
        time.sleep(0.02)  # faster than its bytes predict: the learned base stays positive
    assert s.estimate(1) >= 0.01


def test_auto_budget_grows_with_the_weights_and_a_set_budget_stays():
    auto = TuneSession(tuning.AUTO)
    assert auto.auto and auto.budget == tuning.AUTO_BASE and not auto.unbounded
    auto.size_to(100 * 2**20)  # a ResNet-50's weights
    assert auto.budget == pytest.approx(tuning.AUTO_BASE + tuning.AUTO_PER_GB * 0.10486, abs=0.01)
    auto.size_to(10 * 2**30)
    assert auto.budget == tuning.AUTO_MAX
    assert "(auto)" in auto.summary() and auto.snapshot()["auto"] is True
    fixed = TuneSession(15)
    fixed.size_to(2**30)
    assert fixed.budget == 15 and not fixed.auto
    assert Options().tune_budget == tuning.AUTO
    assert Options.from_pass_config(["fluidml.tune_budget=auto"]).tune_budget == tuning.AUTO


def test_the_layout_check_share_is_kept_only_where_the_check_runs():
    """A new layout plan keeps LAYOUT_CHECK_SHARE of the budget for its end-to-end check on this
    host's LLVM target; a cross target (the check never runs there) keeps the whole budget for
    measuring, as does a compile with fluidml.layout_verify=0."""
    import tvm

    from fluidml_tvm.schedules.measure import measures_here

    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    on = Options(layout_verify=True)  # (the suite's default is off: conftest)
    for target, options, kept in ((tvm.target.Target("llvm"), on, True), (arm, on, False),
                                  (tvm.target.Target("llvm"), Options(layout_verify=False), False)):
        session = tuning.TuneSession(10)
        with session.activate():
            tuning.keep_for_layout_check(options, measures_here(target))
        assert session.reserved == ({"layout check": tuning.LAYOUT_CHECK_SHARE * 10} if kept
                                    else {}), target
