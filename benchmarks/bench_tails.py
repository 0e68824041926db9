"""Kernels no register tile divides (issue 13): before / after / a dividing twin / ONNX Runtime.

Each kernel is one single-op ONNX model with the shape of a complaint (the OCR detector's head,
VGG-11's classifier) or a corpus fallback (``/work/wt-corpus`` baseline), compiled three ways:

* **before**: what it got before issue 13 - the schedule stage restricted to the generic rules
  (``reduction``, ``injective``), which is where every one of these kernels fell;
* **after**: this branch, candidates measured (``fluidml.cost=measured``);
* **twin**: the nearest shape whose channels / columns / rows a tile divides (24 -> 32
  channels, 13 -> 14 columns, 1000 -> 1024 classes), after - the rate the padded kernel is
  judged against (target: within ~1.5x of it);

and ONNX Runtime runs the same model. All four are timed round by round, interleaved, each round
under the load probe (:class:`fluidml_tvm.schedules.measure.LoadProbe`); each keeps its best
quiet round (else its best round). GFLOP/s count the kernel's real FLOPs (padding not counted).
2 threads everywhere. Outputs are checked against ONNX Runtime.

    python benchmarks/bench_tails.py [--only ocr-conv ...] [--rounds 5] [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

THREADS = 2
os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before TVM's runtime starts its thread pool

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402
from rounds import pick, timed_round  # noqa: E402

import fluidml_tvm  # noqa: E402
from fluidml_tvm.schedules import stage  # noqa: E402

FAMILY = ("conv", "matmul", "dense")


def _model(nodes, inputs, outputs, inits):
    g = h.make_graph(nodes, "k", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _vi(name, shape):
    return h.make_tensor_value_info(name, TP.FLOAT, list(shape))


def _w(rng, name, shape, scale=0.1):
    return nh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def conv(C, O, H, W, k=3, s=1, pad=None, g=1, act="Relu"):  # noqa: E741
    rng = np.random.default_rng(0)
    pad = k // 2 if pad is None else pad
    oh, ow = (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1
    n = [h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[s, s],
                     pads=[pad] * 4, group=g), h.make_node(act, ["c"], ["y"])]
    m = _model(n, [_vi("x", (1, C, H, W))], [_vi("y", (1, O, oh, ow))],
               [_w(rng, "w", (O, C // g, k, k)), _w(rng, "b", (O,))])
    return m, 2.0 * O * oh * ow * C // g * k * k


def conv_t(C, O, H, W, k=2, s=2, act="Relu"):  # noqa: E741
    rng = np.random.default_rng(0)
    oh, ow = (H - 1) * s + k, (W - 1) * s + k
    n = [h.make_node("ConvTranspose", ["x", "w", "b"], ["c"], kernel_shape=[k, k],
                     strides=[s, s]), h.make_node(act, ["c"], ["y"])]
    m = _model(n, [_vi("x", (1, C, H, W))], [_vi("y", (1, O, oh, ow))],
               [_w(rng, "w", (C, O, k, k)), _w(rng, "b", (O,))])
    return m, 2.0 * C * H * W * O * k * k


def matmul(M, N, K, lead=()):
    rng = np.random.default_rng(0)
    n = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["y"])]
    m = _model(n, [_vi("x", (*lead, M, K))], [_vi("y", (*lead, M, N))],
               [_w(rng, "w", (K, N)), _w(rng, "b", (N,))])
    return m, 2.0 * int(np.prod(lead or (1,))) * M * N * K


def scores(B, M, N, K):
    n = [h.make_node("MatMul", ["a", "b"], ["s"]), h.make_node("Mul", ["s", "c"], ["y"])]
    m = _model(n, [_vi("a", (B, M, K)), _vi("b", (B, K, N))], [_vi("y", (B, M, N))],
               [nh.from_array(np.array(0.125, np.float32), "c")])
    return m, 2.0 * B * M * N * K


def se(C, R, H):
    rng = np.random.default_rng(0)
    n = [h.make_node("GlobalAveragePool", ["x"], ["p"]),
         h.make_node("Conv", ["p", "w1", "b1"], ["r0"], kernel_shape=[1, 1]),
         h.make_node("Relu", ["r0"], ["r1"]),
         h.make_node("Conv", ["r1", "w2", "b2"], ["e0"], kernel_shape=[1, 1]),
         h.make_node("HardSigmoid", ["e0"], ["gt"], alpha=1 / 6, beta=0.5),
         h.make_node("Mul", ["x", "gt"], ["y"])]
    m = _model(n, [_vi("x", (1, C, H, H))], [_vi("y", (1, C, H, H))],
               [_w(rng, "w1", (R, C, 1, 1)), _w(rng, "b1", (R,)), _w(rng, "w2", (C, R, 1, 1)),
                _w(rng, "b2", (C,))])
    return m, 4.0 * C * R


def db_head(C=96, H=80, inner=24):
    """A DBNet-style detector head (the OCR complaint): conv 3x3 C -> inner + ReLU, convT k2 s2
    inner -> inner + ReLU, convT k2 s2 inner -> 1 + Sigmoid (BatchNorm folded into the bias)."""
    rng = np.random.default_rng(0)
    n = [h.make_node("Conv", ["x", "w1", "b1"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
         h.make_node("Relu", ["a"], ["a1"]),
         h.make_node("ConvTranspose", ["a1", "w2", "b2"], ["t"], kernel_shape=[2, 2],
                     strides=[2, 2]),
         h.make_node("Relu", ["t"], ["t1"]),
         h.make_node("ConvTranspose", ["t1", "w3", "b3"], ["c"], kernel_shape=[2, 2],
                     strides=[2, 2]),
         h.make_node("Sigmoid", ["c"], ["y"])]
    m = _model(n, [_vi("x", (1, C, H, H))], [_vi("y", (1, 1, 4 * H, 4 * H))],
               [_w(rng, "w1", (inner, C, 3, 3)), _w(rng, "b1", (inner,)),
                _w(rng, "w2", (inner, inner, 2, 2)), _w(rng, "b2", (inner,)),
                _w(rng, "w3", (inner, 1, 2, 2)), _w(rng, "b3", (1,))])
    flops = 2.0 * (inner * C * 9 * H * H + inner * inner * 4 * H * H + inner * 4 * 4 * H * H)
    return m, flops


# name -> (where it comes from, kernel, its dividing twin or None)
KERNELS = {
    "ocr-conv": ("OCR head: conv 3x3 96->24, 80x80", lambda: conv(96, 24, 80, 80),
                 lambda: conv(96, 32, 80, 80)),
    "ocr-convT24": ("OCR head: convT k2 s2 24->24, 80->160", lambda: conv_t(24, 24, 80, 80),
                    lambda: conv_t(24, 32, 80, 80)),
    "ocr-convT1": ("OCR head: convT k2 s2 24->1, 160->320",
                   lambda: conv_t(24, 1, 160, 160, act="Sigmoid"),
                   lambda: conv_t(24, 16, 160, 160, act="Sigmoid")),
    "ocr-head": ("OCR head, all three (DBNet-style, 96 ch at 80x80 -> 1 x 320x320)", db_head,
                 lambda: db_head(inner=32)),
    "vgg-fc": ("VGG-11 classifier 1x4096 -> 1000", lambda: matmul(1, 1000, 4096),
               lambda: matmul(1, 1024, 4096)),
    "squeeze-cls": ("SqueezeNet 1.1 classifier conv 1x1 512->1000, 13x13",
                    lambda: conv(512, 1000, 13, 13, k=1), lambda: conv(512, 1024, 14, 14, k=1)),
    "mbv3s-1x1": ("MobileNetV3-S conv 1x1 240->40, 14x14", lambda: conv(240, 40, 14, 14, k=1),
                  lambda: conv(240, 48, 14, 14, k=1)),
    "mbv3l-1x1": ("MobileNetV3-L conv 1x1 72->24, 56x56", lambda: conv(72, 24, 56, 56, k=1),
                  lambda: conv(72, 32, 56, 56, k=1)),
    "effnet-1x1": ("EfficientNet-B0 conv 1x1 144->24, 56x56",
                   lambda: conv(144, 24, 56, 56, k=1), lambda: conv(144, 32, 56, 56, k=1)),
    "shuffle-stem": ("ShuffleNetV2 stem conv 3x3 s2 3->24, 224",
                     lambda: conv(3, 24, 224, 224, s=2), lambda: conv(3, 32, 224, 224, s=2)),
    "regnet-group": ("RegNetY-400MF grouped conv 3x3 104 ch, 13 groups of 8, 28x28",
                     lambda: conv(104, 104, 28, 28, g=13), lambda: conv(128, 128, 28, 28, g=8)),
    "mbv3l-se": ("MobileNetV3-L squeeze-excitation 120->32->120, 28x28 (whole block)",
                 lambda: se(120, 32, 28), None),
    "convnext-mlp": ("ConvNeXt-T MLP [1,56,56,96] x [96,384]",
                     lambda: matmul(56, 384, 96, lead=(1, 56)), lambda: matmul(3136, 384, 96)),
    "vit-scores": ("ViT-B/16 attention scores 12 x 197x197, K=64",
                   lambda: scores(12, 197, 197, 64), lambda: scores(12, 192, 192, 64)),
    "whisper-scores": ("Whisper-tiny attention scores 6 x 1500x1500, K=64",
                       lambda: scores(6, 1500, 1500, 64), lambda: scores(6, 1536, 1536, 64)),
    "gemv-1000": ("CNN classifier GEMV 1x1024 -> 1000", lambda: matmul(1, 1000, 1024),
                  lambda: matmul(1, 1024, 1024)),
}


@contextlib.contextmanager
def generic_rules_only():
    """The schedule stage as these kernels met it before issue 13: only the generic rules."""
    saved = stage.RULES
    stage.RULES = tuple(r for r in saved if r.generic)
    try:
        yield
    finally:
        stage.RULES = saved


def compile_one(model, cache, trials):
    cfg = ["fluidml.layout=0", "fluidml.cost=measured", f"fluidml.cache_dir={cache}",
           f"fluidml.tune_trials={trials}"]
    t0 = time.time()
    res = fluidml_tvm.compile(model, pass_config=cfg)
    decs = [d for d in res.decisions["schedule"] if any(k in d.subject for k in FAMILY)]
    return res.load(), time.time() - t0, decs


def feeds_of(model):
    rng = np.random.default_rng(1)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(KERNELS), choices=list(KERNELS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="per engine per round")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="fluidml-tails-")
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    print(f"threads {THREADS}, rounds {args.rounds} x {args.seconds}s per engine, cache {cache}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| kernel | ORT | before | after | after x ORT | after / before | twin | after vs "
          "twin rate | quiet rounds, max load | after: schedule |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in args.only:
        label, make, make_twin = KERNELS[key]
        model, flops = make()
        feeds = feeds_of(model)
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        with generic_rules_only():
            before, _, dec_b = compile_one(model, cache, args.trials)
        after, ct, dec_a = compile_one(model, cache, args.trials)
        engines = {"ort": lambda s=sess, f=feeds: s.run(None, f)}
        for name, m in (("before", before), ("after", after)):
            out = list(m.run(feeds).values())[0]
            err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))
            assert err < 1e-4, f"{key} {name}: relative error {err:.1e} against ORT"
            a = m._arrays(feeds)
            engines[name] = lambda m=m, a=a: m.vm["main"](*a)
        twin_flops = 0.0
        if make_twin is not None:
            tmodel, twin_flops = make_twin()
            twin, _, _ = compile_one(tmodel, cache, args.trials)
            ta = twin._arrays(feeds_of(tmodel))
            engines["twin"] = lambda m=twin, a=ta: m.vm["main"](*a)
        rounds = {k: [] for k in engines}
        for _ in range(args.rounds):
            for k, fn in engines.items():
                rounds[k].append(timed_round(fn, args.seconds))
        best = {k: pick(v) for k, v in rounds.items()}
        t = {k: v[0] for k, v in best.items()}
        quiet = "/".join(str(best[k][1]) for k in engines)
        load = max(v[2] for v in best.values())

        def rate(k, f=flops, t=t):
            return f"{t[k] * 1e3:.3f} ms ({f / t[k] / 1e9:.1f} GF/s)"

        twin = rate("twin", twin_flops) if "twin" in t else "-"
        vs = f"{(flops / t['after']) / (twin_flops / t['twin']):.2f}" if "twin" in t else "-"
        sched = "; ".join(f"{d.choice}: {d.reason.split(' (measured')[0]}" for d in dec_a)
        assert all(d.choice in ("reduction", "injective") for d in dec_b), dec_b
        print(f"| {label} | {rate('ort')} | {rate('before')} | {rate('after')} | "
              f"{t['after'] / t['ort']:.2f} | {t['after'] / t['before']:.3f} | {twin} | {vs} | "
              f"{quiet} of {args.rounds}, {load:.2f} | {sched} (compile {ct:.0f} s) |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
