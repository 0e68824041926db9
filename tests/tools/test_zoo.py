"""Tests of the model zoo: ONNX validity, ONNX Runtime runs, stock TVM parity, invariants.

TVM outputs are compared with ONNX Runtime at rtol = atol = 1e-4 (fp32; observed max abs diff on
the tiny models is below 1e-5).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fluidml_tvm.tools import zoo

TOL = {"rtol": 1e-4, "atol": 1e-4}

EXPECTED_OUTPUTS = {
    "bert": {"last_hidden_state": (1, 16, 64), "pooler_output": (1, 64)},
    "gpt-neox": {"logits": (1, 16, 512)},
    "vgg11": {"output": (1, 10)},
    "vgg16": {"output": (1, 10)},
    "resnet50": {"output": (1, 10)},
    "mobilenet": {"output": (1, 10)},
}

# Published parameter counts (torchvision; Hugging Face bert-base-uncased with pooler; Pythia-70M).
FULL_PARAMS = {
    "bert": 109_482_240,
    "gpt-neox": 70_426_624,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "resnet50": 25_557_032,
    "mobilenet": 3_504_872,
}


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _run_ort(model, feeds):
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


@pytest.fixture(scope="module")
def tiny():
    """Each tiny model, built once for the module (seed 0)."""
    return {name: zoo.build(name, "tiny", seed=0) for name in zoo.MODELS}


def test_models_listed():
    assert set(zoo.MODELS) == set(EXPECTED_OUTPUTS)
    assert set(zoo.DYNAMIC_MODELS) == {"bert", "gpt-neox"}


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_tiny_checks_and_runs_in_ort(tiny, name):
    model = tiny[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    feeds = zoo.random_inputs(model, seed=0)
    assert set(feeds) == set(zoo.input_shapes(model))
    outs = _run_ort(model, feeds)
    assert {k: v.shape for k, v in outs.items()} == EXPECTED_OUTPUTS[name]
    for v in outs.values():
        assert np.all(np.isfinite(v)) and float(np.std(v)) > 1e-3  # not degenerate


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_seeds(name):
    def weights(seed):
        return {t.name: onnx.numpy_helper.to_array(t) for t in
                zoo.build(name, "tiny", seed=seed).graph.initializer}

    a, a2, b = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], a2[k]) for k in a)
    big = [k for k in a if k.endswith(".weight") and a[k].size > 16]  # not buffers
    assert big and all(not np.array_equal(a[k], b[k]) for k in big)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_param_counts(name):
    """Full configs match the published architectures; counted without generating weights."""
    assert zoo.param_count(name, "full") == FULL_PARAMS[name]
    model = zoo.build(name, "tiny")
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert 0 < zoo.param_count(name, "tiny") <= total


def test_random_inputs_valid_ids(tiny):
    feeds = zoo.random_inputs("bert", seed=3)
    assert feeds["input_ids"].dtype == np.int64
    assert 0 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 512
    assert set(np.unique(feeds["token_type_ids"])) <= {0, 1}
    assert feeds["attention_mask"][0, :12].all() and not feeds["attention_mask"][0, 12:].any()
    assert not np.array_equal(feeds["input_ids"], zoo.random_inputs("bert", seed=4)["input_ids"])
    by_model = zoo.random_inputs(tiny["bert"], seed=3)  # from the model or from the name alike
    assert all(np.array_equal(by_model[k], feeds[k]) for k in feeds)
    img = zoo.random_inputs(tiny["vgg11"])
    assert img["input"].shape == (1, 3, 32, 32) and img["input"].dtype == np.float32


@pytest.mark.parametrize("name", zoo.DYNAMIC_MODELS)
def test_dynamic_runs_in_ort(tiny, name):
    model = zoo.build(name, "tiny", seed=0, dynamic=True)
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    with pytest.raises(ValueError, match="symbolic"):
        zoo.input_shapes(model)
    # Reshape targets are computed at run time, torch style
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= ops
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(produced.get(n.input[1]) == "Concat"
               for n in model.graph.node if n.op_type == "Reshape")

    sess = _session(model)
    names = [i.name for i in model.graph.input]
    for batch, seq in [(1, 8), (2, 24)]:
        feeds = zoo.random_inputs(model, seed=1, shapes={n: [batch, seq] for n in names})
        out = sess.run(None, feeds)[0]
        assert out.shape[:2] == (batch, seq)
    # at the static length, the dynamic model computes what the static one does
    feeds = zoo.random_inputs(tiny[name], seed=2)
    ref = _run_ort(tiny[name], feeds)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_bert_padding_is_masked(tiny):
    """Token ids at masked (padded) positions do not change the unpadded outputs."""
    feeds = zoo.random_inputs(tiny["bert"], seed=0)
    ref = _run_ort(tiny["bert"], feeds)["last_hidden_state"]
    feeds["input_ids"] = feeds["input_ids"].copy()
    feeds["input_ids"][0, 12:] = (feeds["input_ids"][0, 12:] + 7) % 512
    got = _run_ort(tiny["bert"], feeds)["last_hidden_state"]
    np.testing.assert_allclose(got[0, :12], ref[0, :12], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0, 12:], ref[0, 12:])


def test_gpt_neox_is_causal(tiny):
    """Changing the last token changes only the last position's logits."""
    feeds = zoo.random_inputs(tiny["gpt-neox"], seed=0)
    ref = _run_ort(tiny["gpt-neox"], feeds)["logits"]
    feeds["input_ids"] = feeds["input_ids"].copy()
    feeds["input_ids"][0, -1] = (feeds["input_ids"][0, -1] + 1) % 512
    got = _run_ort(tiny["gpt-neox"], feeds)["logits"]
    np.testing.assert_allclose(got[0, :-1], ref[0, :-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0, -1], ref[0, -1])


def test_resolve_and_save(tmp_path):
    model, desc = zoo.resolve("zoo:bert:tiny")
    assert "bert (tiny)" in desc and "2 layers" in desc
    assert {p.key: p.value for p in model.metadata_props}["fluidml.zoo.size"] == "tiny"
    model, desc = zoo.resolve("zoo:gpt_neox:tiny:dynamic")
    assert "dynamic" in desc and model.graph.input[0].type.tensor_type.shape.dim[1].dim_param
    assert zoo.is_zoo_spec("zoo:vgg11") and not zoo.is_zoo_spec("model.onnx")
    for bad in ("bert", "zoo:nope", "zoo:bert:huge", "zoo:vgg11:tiny:dynamic"):
        with pytest.raises(ValueError):
            zoo.resolve(bad)
    path = zoo.save("mobilenet", str(tmp_path / "m.onnx"), size="tiny", seed=5)
    loaded = onnx.load(path)
    assert loaded.SerializeToString() == zoo.build("mobilenet", "tiny", seed=5).SerializeToString()


# --- stock TVM -------------------------------------------------------------------------------

def _tvm_run(model, feeds, shape_dict):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, shape_dict=shape_dict)
    target = tvm.target.Target({"kind": "llvm"})
    ex = tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[k]) for k in shape_dict])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_tiny_compiles_with_stock_tvm_and_matches_ort(tiny, name):
    model = tiny[name]
    feeds = zoo.random_inputs(model, seed=0)
    ref = list(_run_ort(model, feeds).values())
    got = _tvm_run(model, feeds, zoo.input_shapes(model))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, **TOL)


@pytest.mark.parametrize("name", zoo.DYNAMIC_MODELS)
def test_dynamic_imports_into_tvm_with_shapes(name):
    """TVM 0.27's importer folds the Shape->...->Reshape chains once input shapes are given."""
    from tvm.relax.frontend.onnx import from_onnx

    model = zoo.build(name, "tiny", dynamic=True)
    shapes = {i.name: [1, 16] for i in model.graph.input}
    mod = from_onnx(model, shape_dict=shapes)
    params = mod["main"].params
    assert [list(p.ty.shape) for p in params[: len(shapes)]] == list(shapes.values())


# --- the graph builder -------------------------------------------------------------------------

def test_graph_builder_names_constants_and_dry_runs():
    from fluidml_tvm.tools.zoo.graph import Graph

    g = Graph(0)
    assert [g.name("w"), g.name("w"), g.name("w")] == ["w", "w_1", "w_2"]
    c = g.const([1, 2])
    assert g.const([1, 2]) == c and g.const([1, 2], np.int32) != c  # shared per dtype and value
    w = g.param("fc.weight", (3, 4))
    assert g.params == 12 and onnx.numpy_helper.to_array(g.inits[-1]).shape == (3, 4)
    a, b = g.op("Split", [w], outputs=2, axis=0)
    assert (a, b) == ("split_out", "split_out_1") and g.nodes[-1].name == "Split"
    assert g.rename_last("parts") == "parts" and g.nodes[-1].output[0] == "parts"
    dry = Graph(0, dry=True)
    dry.param("fc.weight", (3, 4))
    dry.buffer("mask", np.ones(2, bool))
    assert dry.params == 12 and dry.inits == []  # counted, never generated
