"""The benchmark corpus scripts (benchmarks/corpus.py, corpus_engines.py, run_corpus.py).

Most tests need neither torch nor OpenVINO: the model list, the report/IR/profile parsers, the
results writer, and the fluidml inventory path (analytic compile + report + IR dump) on a small
hand-built ONNX model. The export test needs the ``corpus`` extra (torch, torchvision,
transformers; ``pip install -e '.[corpus]'``), which CI does not install: it is skipped, with that
reason, only when torch/torchvision are missing. The OpenVINO test is skipped likewise when the
``openvino`` package (also in the extra) is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import corpus  # noqa: E402
import corpus_engines  # noqa: E402
import run_corpus  # noqa: E402

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
NEEDS_EXTRA = pytest.mark.skipif(
    not HAVE_TORCH, reason="needs the 'corpus' extra (torch, torchvision; pip install -e "
                           "'.[corpus]'), which CI does not install")

REPORT = """# fluidml-tvm report: m.onnx (fluidml)
## layout
conv2d: NCHW kept
## schedule
conv2d: reduction - reduction (generic): parallel leading spatial loops | not conv2d: no \
register tile divides channels 8 / columns 16
conv2d1: depthwise - depthwise (columns innermost, stride 1) tile 1 x 16 lanes (analytic)
fused_conv2d3_add_relu: conv2d - conv2d F=48 X=16 tile 8x48 (analytic)
fused_matmul_add2: reduction - reduction (row form) | not matmul: no tile divides the shape
fused_batch_norm_add: injective - injective: 1 loop nest(s), parallel + vectorize x16
mean: reduction - reduction (row form: 2 nests under 4 fused row axes)
dense5: none - no rule applied
## memory
main: planned 100 bytes
"""

IR = '''# from tvm.script import ir as I
@I.ir_module
class Module:
    @T.prim_func(private=True, s_tir=True)
    def conv2d(lv: T.Buffer((T.int64(1), T.int64(16), T.int64(28), T.int64(28)), "float32"), \
B: T.Buffer((T.int64(32), T.int64(4), T.int64(3), T.int64(3)), "float32"), \
conv2d_nchw: T.Buffer((T.int64(1), T.int64(32), T.int64(14), T.int64(14)), "float32")):
        T.func_attr({"op_pattern": 4, "tirx.noalias": True})
        pad_temp = T.sblock_alloc_buffer((T.int64(1), T.int64(16), T.int64(30), T.int64(30)))
        for i0, i1, i2, i3 in T.grid(T.int64(1), T.int64(16), T.int64(30), T.int64(30)):
            with T.sblock("pad_temp"):
                v_i0, v_i1, v_i2, v_i3 = T.axis.remap("SSSS", [i0, i1, i2, i3])
                pad_temp[v_i0, v_i1, v_i2, v_i3] = lv[v_i0, v_i1, v_i2 - 1, v_i3 - 1]
        for nn, ff, yy, xx, rc, ry, rx in T.grid(T.int64(1), T.int64(32), T.int64(14), \
T.int64(14), T.int64(4), T.int64(3), T.int64(3)):
            with T.sblock("group_conv2d_nchw"):
                v_nn, v_ff, v_yy, v_xx, v_rc, v_ry, v_rx = T.axis.remap("SSSSRRR", [nn, ff, yy, \
xx, rc, ry, rx])
                T.reads(pad_temp[v_nn, v_ff // T.int64(8) * T.int64(4) + v_rc, v_yy * \
T.int64(2) + v_ry, v_xx * T.int64(2) + v_rx], B[v_ff, v_rc, v_ry, v_rx])
                T.writes(conv2d_nchw[v_nn, v_ff, v_yy, v_xx])
                with T.init():
                    conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = T.float32(0.0)
                conv2d_nchw[v_nn, v_ff, v_yy, v_xx] = conv2d_nchw[v_nn, v_ff, v_yy, v_xx]

    @T.prim_func(private=True, s_tir=True)
    def fused_matmul_add2(x: T.Buffer((T.int64(1), T.int64(128), T.int64(768)), "float32"), \
w: T.Buffer((T.int64(768), T.int64(3072)), "float32"), \
out: T.Buffer((T.int64(1), T.int64(128), T.int64(3072)), "float32")):
        for i0, i1, i2, k in T.grid(T.int64(1), T.int64(128), T.int64(3072), T.int64(768)):
            with T.sblock("matmul"):
                v_i0, v_i1, v_i2, v_k = T.axis.remap("SSSR", [i0, i1, i2, k])
                T.reads(x[v_i0, v_i1, v_k], w[v_k, v_i2])
                T.writes(out[v_i0, v_i1, v_i2])
'''


def test_model_list_is_complete_and_shapes_are_static():
    names = set(corpus.MODELS)
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
            "regnet_y_400mf", "mnasnet1_0", "resnet18", "resnet50", "densenet121",
            "squeezenet1_1", "googlenet", "convnext_tiny", "vit_b_16", "distilbert",
            "whisper_tiny_encoder", "t5_small_encoder"} == names
    for spec in corpus.MODELS.values():
        assert spec.family in ("torchvision", "transformers")
        for i in spec.inputs:
            assert i.shape[0] == 1 and all(isinstance(d, int) and d > 0 for d in i.shape)
    assert corpus.MODELS["whisper_tiny_encoder"].input_shapes() == "input_features:[1,80,3000]"
    assert set(corpus.QUICK) <= names
    with pytest.raises(SystemExit):
        corpus.select("resnet50,nope")


def test_inputs_are_seeded_and_in_range():
    spec = corpus.MODELS["distilbert"]
    a, b = corpus.make_inputs(spec), corpus.make_inputs(spec)
    assert a["input_ids"].dtype == np.int64 and a["input_ids"].shape == (1, 128)
    assert 0 <= a["input_ids"].min() and a["input_ids"].max() < 30522
    assert (a["attention_mask"] == 1).all()
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def test_schedule_section_and_fallbacks():
    rows = corpus.parse_schedule(REPORT)
    assert [r["kernel"] for r in rows] == ["conv2d", "conv2d1", "fused_conv2d3_add_relu",
                                            "fused_matmul_add2", "fused_batch_norm_add", "mean",
                                            "dense5"]
    fb = corpus.fallbacks(rows)
    assert [(r["kernel"], r["rule"]) for r in fb] == [
        ("conv2d", "reduction"), ("fused_matmul_add2", "reduction"), ("dense5", "none")]
    assert "no register tile divides channels 8 / columns 16" in fb[0]["reason"]


def test_kernel_shapes_from_the_ir_dump():
    funcs = corpus.primfunc_shapes(IR)
    conv = funcs["conv2d"]
    assert conv["buffers"][1] == ("B", [32, 4, 3, 3], "float32")
    assert conv["blocks"][0]["block"] == "group_conv2d_nchw"
    assert conv["blocks"][0]["extents"] == [1, 32, 14, 14, 4, 3, 3]
    geo = corpus.conv_geometry(conv)
    assert geo == {"block": "group_conv2d_nchw", "stride": 2, "dilation": 1, "in_channels": 16,
                   "out_channels": 32, "kernel": [3, 3], "groups": 4, "input_hw": [28, 28],
                   "output_hw": [14, 14]}
    mm = funcs["fused_matmul_add2"]
    assert mm["blocks"][0]["extents"] == [1, 128, 3072, 768]
    assert "matmul SSSR [1,128,3072,768]" in corpus.describe_kernel(mm)
    assert corpus.conv_geometry(mm) is None
    assert corpus.matmul_geometry(mm) == {"block": "matmul", "batch": [], "M": 128,
                                          "rows": [1, 128], "N": 3072, "K": 768}


def test_baseline_inventory_from_saved_report_and_ir(tmp_path):
    """``corpus.py baseline`` re-reads a check's saved report and IR dump (no torch needed)."""
    work = tmp_path / "work"
    (work / "m.ir").mkdir(parents=True)
    (work / "m.report.md").write_text(REPORT.replace("fused_matmul_add2", "fused_matmul_add2"))
    (work / "m.ir" / "08-fluidml.legalize.py").write_text(IR)
    (work / "m.ir" / "09-fluidml.schedule.py").write_text("")
    found = {"m": {"model": "m", "description": "test model", "opset": 17, "onnx_nodes": 3,
                   "parameters": 1000, "inputs": "x:[1,16,28,28]", "exporter": "torchscript",
                   "loadavg": [1.5, 1.0, 0.5],
                   "engines": {"ort": {"ok": True, "median_ms": 1.0,
                                       "vs_torch": {"max_abs": 1e-6, "rel": 1e-6}},
                               "openvino": {"ok": True, "median_ms": 2.0,
                                            "vs_ort": {"max_abs": 2e-6, "rel": 2e-6}}},
                   "fluidml_analytic": {"ok": True, "seconds": 3.0}}}
    md = corpus.baseline_markdown(found, str(tmp_path))
    assert "| conv2d | reduction | grouped conv2d 3x3 stride 2, 16->32 ch, groups 4 (4 ch/group)" \
        ", 28x28 -> 14x14 |" in md
    assert "matmul M=128 N=3072 K=768" in md
    assert "| reduction | not conv2d: no register tile divides channels N / columns N | 1 | " \
        "m (1) |" in md
    assert "| none | no rule applied | 1 | m (1) |" in md


def test_profile_table_parser():
    text = """Per-kernel times (summed over 1 run(s)):
kernel                                            calls  total (ms)  mean (us)  share
fused_conv2d17_add9_relu9                             1    134.3807  134380.74  35.1%
concatenate2                                          2     17.9509    8975.47   4.7%
(19 more kernels)                                    25     96.9794             25.3%
(VM builtins: 6 kinds)                              135      0.4428              0.1%"""
    rows = corpus_engines.parse_profile(text)
    assert rows[0] == {"kernel": "fused_conv2d17_add9_relu9", "calls": 1, "total_ms": 134.3807,
                       "share": 35.1}
    assert rows[2]["kernel"] == "(19 more kernels)" and rows[2]["calls"] == 25
    assert rows[3]["kernel"] == "(VM builtins: 6 kinds)" and rows[3]["share"] == 0.1


def test_profile_parser_reads_the_roofline_columns():
    """The table as ``fluidml-tvm run --profile`` prints it for a library that carries its
    kernels' work: GFLOP/s, GB/s and the roofline share are read too (a row below 30% also gets
    a warning line, which is not a row)."""
    from fluidml_tvm.runtime.profile import format_kernel_table

    rows = [{"name": "fused_conv2d_add_relu_packed", "calls": 2, "total_ms": 4.0,
             "mean_us": 2000.0},
            {"name": "fused_matmul_add_" + "x" * 60, "calls": 1, "total_ms": 1.0,
             "mean_us": 1000.0},
            {"name": "concatenate", "calls": 1, "total_ms": 0.5, "mean_us": 500.0},
            {"name": "vm.builtin.alloc", "calls": 9, "total_ms": 0.1, "mean_us": 11.0}]
    meta = {"kernels": {"fused_conv2d_add_relu": {"flops": 2e8, "bytes": 4e6, "rule": "conv2d"},
                        "fused_matmul_add_" + "x" * 60: {"flops": 1e6, "bytes": 1e6,
                                                         "rule": "reduction"}},
            "host_peak": {"gflops": 200.0, "gbps": 20.0}}
    text = format_kernel_table(rows, top=3, metadata=meta)
    got = corpus_engines.parse_profile(text)
    assert [r["kernel"] for r in got] == ["fused_conv2d_add_relu_packed",
                                         ("fused_matmul_add_" + "x" * 60)[:48], "concatenate",
                                         "(VM builtins: 1 kinds)"]
    assert got[0]["gflops"] == pytest.approx(100.0) and got[0]["roof"] == pytest.approx(0.5)
    assert got[1]["roof"] == pytest.approx(0.05)  # 1 ms for a 0.05 ms bound (the 1 MB)
    assert "roof" not in got[2] and got[3]["calls"] == 9
    assert abs(sum(r["share"] for r in got) - 100) < 0.5


def test_results_writer(tmp_path):
    info = run_corpus.host_info(2)
    assert info["threads"] == 2 and info["cores"] >= 1 and "versions" in info

    def eng(ms, diff=None):
        d = {"ok": True, "median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.1, "samples": 5}
        if diff is not None:
            d["vs_ort"] = {"max_abs": diff, "rel": diff}
        return d

    rows = []
    for name, f, t, o, v in (("a", 2.0, 100.0, 1.0, 0.5), ("b", 8.0, 400.0, 4.0, 4.0)):
        engines = {"fluidml": eng(f, 1e-6), "tvm": eng(t, 2e-6), "ort": eng(o),
                   "openvino": eng(v, 3e-7)}
        rows.append({"model": name, "engines": engines, "ratios": run_corpus.ratios(engines),
                     "loadavg_before": [1.0, 1.0, 1.0], "loadavg_after": [2.0, 1.5, 1.0],
                     "cpu_skew_before": {"ms": [10.0, 10.5], "skew": 1.05},
                     "cpu_skew_after": {"ms": [19.0, 10.0], "skew": 1.9},
                     "fluidml_profile": {"ok": True, "rows": [
                         {"kernel": "fused_conv2d", "calls": 1, "total_ms": 1.5, "share": 75.0}]}})
    assert rows[0]["ratios"] == {"fluidml/ort": 2.0, "fluidml/openvino": 4.0, "tvm/ort": 100.0}
    assert run_corpus.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert run_corpus.geomean([None, 0]) is None
    jp, mp = run_corpus.write_results(rows, info, {"rounds": 1, "repeat": 5, "budget": 5.0},
                                      str(tmp_path), "t")
    data = json.load(open(jp))
    assert data["geomean"]["fluidml/ort"] == pytest.approx(2.0)
    assert data["geomean"]["fluidml/openvino"] == pytest.approx(np.sqrt(8.0))
    md = open(mp).read()
    assert "**geometric mean** | **2.00x** | **2.83x** | **100.00x**" in md
    assert "| fused_conv2d | 1 | 1.500 | 75.0% |" in md
    rows = run_corpus.annotate(
        [{"kernel": "fused_conv2d3_add_relu", "calls": 1, "total_ms": 1.0, "share": 50.0},
         {"kernel": "fused_", "calls": 1, "total_ms": 1.0, "share": 50.0}],
        corpus.parse_schedule(REPORT))
    assert rows[0]["rule"] == "conv2d" and "rule" not in rows[1]  # a prefix, but not unique
    sched = [{"kernel": "fused_conv2d_add_add1_tir_clip_divide_multiply", "rule": "conv2d",
              "reason": "r"}, {"kernel": "fused_conv2d11_add6", "rule": "conv2d", "reason": "r"}]
    assert run_corpus._match("fused_conv2d_add_add1_tir_clip_divide_multiply_p", sched) == \
        sched[:1]  # "_packed" cut at 48 characters
    assert run_corpus._match("fused_conv2d11_add6_packed", sched) == sched[1:]
    assert run_corpus._match("fused_conv2d11_add6_relu", sched) == []
    assert "machine load" in md and info["cpu"] in md
    assert "| a | 1.00/2.00 | 1.05/1.90 |" in md and "CPU skew: the slowest CPU" in md


def test_cpu_skew_times_every_cpu_and_restores_the_affinity():
    """The per-CPU probe times each CPU the process may use, the slowest over the fastest, and
    leaves the calling thread's affinity as it found it."""
    import os

    import rounds

    before = os.sched_getaffinity(0)
    got = rounds.cpu_skew(n=20_000, reps=1)
    assert os.sched_getaffinity(0) == before
    assert len(got["ms"]) == len(before) and all(t > 0 for t in got["ms"])
    assert got["skew"] == pytest.approx(max(got["ms"]) / min(got["ms"]), rel=0.02)
    assert rounds.skew_text(got, None).endswith("/-")


def _conv_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1000, 8, 1, 1)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 1000)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return model


def test_analytic_inventory_on_a_small_model(tmp_path):
    """The fluidml path of ``corpus.py check`` (CLI compile --report --dump-ir, parsers) on a
    hand-built conv(1x1, 1000 channels at 13x13) + GEMM model; no torch needed."""
    path = str(tmp_path / "m.onnx")
    _conv_model(path)
    manifest = {"model": "m", "input_shapes": "x:[1,8,13,13]"}
    res = corpus.compile_analytic(path, manifest, str(tmp_path), 2, timeout=600)
    assert res["ok"], res.get("error")
    assert res["heavy_kernels"] >= 2  # the conv and the GEMM
    for fb in res["fallbacks"]:  # whatever falls back carries a reason and its shapes
        assert fb["reason"] and "not found" not in fb["shape"]
    out = str(tmp_path / "run.npz")
    np.savez(str(tmp_path / "in.npz"), x=np.ones((1, 8, 13, 13), np.float32))
    r = corpus_engines.spawn({"engine": "fluidml", "lib": res["lib"], "threads": 2,
                              "inputs": str(tmp_path / "in.npz"), "repeat": 2, "budget": 1.0,
                              "outputs": out}, str(tmp_path), "run")
    assert r["ok"], r.get("error")
    assert r["samples"] >= 1 and r["median_ms"] > 0


@NEEDS_EXTRA
def test_export_squeezenet_small(tmp_path):
    """SqueezeNet 1.1 at 1x3x64x64 exports (opset 17), and ONNX Runtime matches torch."""
    import onnxruntime as ort

    spec = corpus.MODELS["squeezenet1_1"]
    m = corpus.export(spec, str(tmp_path), shape_override={"image": (1, 3, 64, 64)},
                      log=lambda *_: None)
    assert m["opset"] == 17 and m["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert m["input_shapes"] == "image:[1,3,64,64]"
    with np.load(tmp_path / "squeezenet1_1.inputs.npz") as d:
        feeds = {k: d[k] for k in d.files}
    with np.load(tmp_path / "squeezenet1_1.torch.npz") as d:
        ref = d["output"]
    got = ort.InferenceSession(str(tmp_path / "squeezenet1_1.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == (1, 1000)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not corpus_engines.have_openvino(),
                    reason="needs openvino (the 'corpus' extra), which CI does not install")
def test_openvino_engine_matches_ort(tmp_path):
    path = str(tmp_path / "m.onnx")
    _conv_model(path)
    np.savez(str(tmp_path / "in.npz"),
             x=np.random.default_rng(1).standard_normal((1, 8, 13, 13)).astype(np.float32))
    outs = {}
    for e in ("ort", "openvino"):
        r = corpus_engines.spawn({"engine": e, "model": path, "threads": 2, "repeat": 2,
                                  "budget": 1.0, "inputs": str(tmp_path / "in.npz"),
                                  "outputs": str(tmp_path / f"{e}.npz")}, str(tmp_path), e)
        assert r["ok"], r.get("error")
        outs[e] = corpus._load_npz_list(r["outputs"])
    assert r["ov_threads"] == 2 and "32" in r["ov_precision"]
    np.testing.assert_allclose(outs["openvino"][0], outs["ort"][0], rtol=1e-4, atol=1e-3)


def test_samples_follow_warm_up_calls(monkeypatch):
    """Timed calls come after warm-up calls (the first slow calls are not in the median), at
    least ``repeat`` of them and for at least MIN_SAMPLE_S; a first call over the budget is
    the sample."""
    import time

    monkeypatch.setattr(corpus_engines, "WARMUP_S", 0.05)
    monkeypatch.setattr(corpus_engines, "MIN_SAMPLE_S", 0.05)
    calls = []

    def once():  # the first 3 calls are slow, as a cold process's are
        calls.append(1)
        time.sleep(0.02 if len(calls) <= 3 else 0.001)

    times = corpus_engines._sample(once, 0.02, 5, 10.0)
    assert len(times) >= 5 and max(times) < 0.015 and sum(times) >= 0.04
    assert len(calls) >= len(times) + 3  # the slow ones were warm-up calls
    assert corpus_engines._sample(once, 20.0, 5, 10.0) == [20.0]


def test_interleaved_engine_times_members_round_by_round(tmp_path, monkeypatch):
    """Engine ``interleaved`` (bench_option_ab.py --in-process): each member is timed once a
    round, the order reversed every other round, and writes its outputs; two ORT members on
    one model give the same outputs."""
    monkeypatch.setattr(corpus_engines, "ROUND_S", 0.02)
    path = str(tmp_path / "m.onnx")
    _conv_model(path)
    np.savez(str(tmp_path / "in.npz"),
             x=np.random.default_rng(1).standard_normal((1, 8, 13, 13)).astype(np.float32))
    order = []
    real_ort = corpus_engines._ort

    def ort(args, inputs):
        once, names, info = real_ort(args, inputs)

        def traced():
            order.append(args["outputs"])
            return once()
        return traced, names, info

    monkeypatch.setattr(corpus_engines, "_ort", ort)
    members = [{"engine": "ort", "model": path, "outputs": str(tmp_path / f"{i}.npz")}
               for i in range(2)]
    r = corpus_engines.run({"engine": "interleaved", "inputs": str(tmp_path / "in.npz"),
                            "threads": 1, "rounds": 3, "members": members})
    assert r["ok"] and [len(m["rounds_ms"]) for m in r["members"]] == [3, 3]
    assert all(t > 0 for m in r["members"] for t in m["rounds_ms"])
    firsts = [order[i] for i in range(len(order)) if i == 0 or order[i] != order[i - 1]]
    # output call of each, then rounds: 0 1 | 1 0 | 0 1 (reversed every other round)
    assert firsts == [members[k]["outputs"] for k in (0, 1, 0, 1, 0, 1)], firsts
    a, b = (corpus._load_npz_list(m["outputs"]) for m in members)
    np.testing.assert_array_equal(a[0], b[0])
