"""Numerics on the real architectures that the onnx package ships, against ONNX Runtime.

Each model's ConstantOfShape weights are swapped for seeded random tensors (see light_models.py);
its logits (the Softmax input) are compared as well as the probabilities. Tolerance: |tvm - ort| <=
1e-3 * max|ort| + 1e-5 per output (fp32, 50+ layers, different summation orders).
"""

import functools

import numpy as np
import onnx
import pytest
from light_models import light_models, with_random_weights
from onnx_models import ort_run

import fluidml_tvm

MODELS = light_models()


@functools.cache
def _case(name):
    model = with_random_weights(onnx.load(MODELS[name]), seed=0)
    inputs = {}
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(1)
    for vi in model.graph.input:
        if vi.name not in inits:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            inputs[vi.name] = rng.standard_normal(shape).astype("float32")
    return model, inputs, ort_run(model, inputs)


def test_all_nine_light_models_present():
    assert len(MODELS) == 9, sorted(MODELS)


# FluidML on all nine; stock TVM (fluidml=0, naive kernels: up to 80 s a model here) on the two
# smallest only, to keep CI short: benchmarks/run_conformance.py runs stock on all of them.
STOCK = ("shufflenet", "squeezenet")
CASES = [(n, 1) for n in sorted(MODELS)] + [(n, 0) for n in STOCK]


@pytest.mark.parametrize("name, fluidml", CASES,
                         ids=[f"{n}-{'fluidml' if f else 'stock'}" for n, f in CASES])
def test_light_model_matches_ort(name, fluidml):
    model, inputs, ref = _case(name)
    # Analytic schedule choices: the kernels are FluidML's scheduled ones (what the numerics check
    # is about) without minutes of measuring full-size networks; measuring is tested elsewhere.
    compiled = fluidml_tvm.compile(model, "x86",
                                   pass_config=[f"fluidml={fluidml}", "fluidml.cost=analytic"])
    got = list(compiled.load().run(inputs).values())
    assert len(got) == len(ref) >= 1
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        scale = float(np.abs(r).max())
        assert scale > 0
        err = float(np.abs(g - r).max())
        assert err <= 1e-3 * scale + 1e-5, f"{name}: max abs diff {err:.3g} vs scale {scale:.3g}"
    assert float(np.std(ref[-1])) > 1e-4, "degenerate outputs: the comparison would prove nothing"
