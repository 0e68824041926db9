"""neighbours.py: a conv node the tune budget did not measure takes the measured layout ratio of
its nearest measured conv; with none near enough it keeps NCHW, as before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from fluidml_tvm import tuning
from fluidml_tvm.costdb import CostDB, target_key
from fluidml_tvm.options import Options
from fluidml_tvm.passes.layout import FluidMLLayout, neighbours
from fluidml_tvm.passes.layout import measure as layout_measure
from fluidml_tvm.passes.layout.graph import build_graph
from fluidml_tvm.passes.layout.layouts import NHWC

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((8, 3, 3, 3)).astype("float32")
W2 = RNG.standard_normal((8, 8, 3, 3)).astype("float32")
W3 = RNG.standard_normal((16, 8, 3, 3)).astype("float32")  # c2's shape but twice the outputs
W4 = RNG.standard_normal((4, 16, 1, 1)).astype("float32")


def _four_convs():
    @I.ir_module
    class Four:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
                c2 = R.nn.conv2d(c1, R.const(W2), padding=[1, 1, 1, 1])
                c3 = R.nn.conv2d(c2, R.const(W3), padding=[1, 1, 1, 1])
                c4 = R.nn.conv2d(c3, R.const(W4))
                R.output(c4)
            return c4

    return Four


def test_distance():
    g, _ = build_graph(_four_convs()["main"])
    f = {g.nodes[i].output: neighbours.conv_features(g, i) for i in range(len(g.nodes))
         if g.nodes[i].op == "relax.nn.conv2d"}
    assert neighbours.distance(f["c2"], f["c3"]) == pytest.approx(1.0)  # 8 -> 16 outputs
    # c3 -> c4: 8 -> 16 inputs, 16 -> 4 outputs, a 1x1 kernel
    assert neighbours.distance(f["c3"], f["c4"]) == pytest.approx(1 + 2 + neighbours.SHAPE_STEP)
    (dw, k, s), nums = f["c2"]
    assert neighbours.distance(((not dw, k, s), nums), f["c2"]) == math.inf  # depthwise apart


@pytest.mark.parametrize("reach, on", [(neighbours.MAX_DISTANCE, True), (-1.0, True),
                                      (neighbours.MAX_DISTANCE, False)])
def test_unmeasured_conv_takes_its_neighbours_ratio(reach, on, tmp_path, monkeypatch):
    """(``fluidml.layout_neighbours=1``) c3 is left unmeasured by an earlier compile's budget
    (its SKIPPED record); c2, one log2 step away, measured NHWC at half its NCHW time: c3 takes
    that ratio and the chain runs NHWC from c1's output to c4's input. With no neighbour in
    reach, or the option off (the default), c3 keeps NCHW (a layout change needs a
    measurement), and so does c2, which would pay for the change."""
    target = tvm.target.Target({"kind": "llvm"})
    monkeypatch.setattr(neighbours, "MAX_DISTANCE", reach)
    mod = _four_convs()
    g, _ = build_graph(mod["main"])
    measured = []

    def fake_measure(self, todo, session, nbytes=0):
        for k in todo:
            i, lx, lo = self.pairs[k]
            name = g.nodes[i].output
            measured.append(name)
            self.table[k] = 1e-3 * (0.5 if (lx, lo) == (NHWC, NHWC) or (
                name == "c4" and lx == NHWC) else 1.0)
        return len(todo)

    monkeypatch.setattr(layout_measure.MeasuredCost, "_measure", fake_measure)
    db = CostDB(str(tmp_path))
    model = layout_measure.MeasuredCost(target, Options(layout_neighbours=on), db,
                                        conversion_penalty=10.0)
    c3 = next(i for i, n in enumerate(g.nodes) if n.output == "c3")
    from fluidml_tvm.passes.layout.dp import candidates

    groups = dict(model.variant_groups(g, candidates(g)))
    for k in groups[c3]:
        db.record(target_key(target), layout_measure.SKIPPED, k, {"node": k}, 0.0)
    p = FluidMLLayout(model=model, explicit_transforms=False)
    with tuning.TuneSession(budget=100.0).activate():
        p(mod)
    assert "c3" not in measured
    layouts = p.plans["main"].layouts
    notes = " ".join(p.plans["main"].notes)
    if reach > 0 and on:
        assert layouts == {"c1": NHWC, "c2": NHWC, "c3": NHWC}
        assert "c3 0.50x from c2" in notes
    else:
        assert "c3" not in layouts and "c2" not in layouts
        assert "nearest measured conv" not in notes
