"""The benchmark corpus: real architectures nobody here wrote, exported to ONNX (issue #13, item 5).

    python benchmarks/corpus.py list
    python benchmarks/corpus.py export [--models a,b] [--out DIR]
    python benchmarks/corpus.py check  [--models a,b] [--out DIR] [--json FILE]

Every model is built from its reference implementation (torchvision, transformers) with seeded
random weights (``torch.manual_seed``; transformers models from a config with ``Model(config)``,
nothing is downloaded from a model hub), set to eval mode and exported with
``torch.onnx.export`` at batch 1 and static shapes into a cache directory (default
``~/.cache/fluidml-tvm/corpus``, never committed). Beside each ``NAME.onnx`` the export writes
``NAME.json`` (input/output names, shapes and dtypes, exporter, opset, versions),
``NAME.inputs.npz`` (the seeded inputs every engine runs on) and ``NAME.torch.npz`` (torch's
outputs on them).

Exporter: torch 2.14 defaults to the dynamo exporter, which cannot emit opset 17 (its version
converter fails on ReduceMean/Squeeze axes, so it writes opset 18); the TorchScript exporter
(``dynamo=False``, deprecated but present) writes opset 17 as asked. Both are selectable
(``--exporter``); the default and the reason are in benchmarks/README.md ("Corpus").

``check`` runs, per model: ONNX Runtime vs torch, OpenVINO vs ONNX Runtime (CPU, fp32 inference
precision, 2 threads, latency hint), each in its own process and timed; a fluidml compile with
``fluidml.cost=analytic --report`` (no kernel measurement) and the list of conv/matmul kernels
whose schedule fell back to a generic rule (``reduction``/``injective``/``none``), with the
report's reason and the kernel's shapes from the IR; and the compiled library's outputs vs ONNX
Runtime. Torch is needed only for ``export``; ``list`` and ``check`` run without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import corpus_engines  # noqa: E402  (a sibling script, importable from benchmarks/)

DEFAULT_OUT = os.path.join(os.path.expanduser("~"), ".cache", "fluidml-tvm", "corpus")
DEFAULT_OPSET = 17
DEFAULT_EXPORTER = "torchscript"
SEED = 0


# ---- the model list (no torch needed) -----------------------------------------------------------
@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple
    dtype: str = "float32"
    kind: str = "normal"  # normal: N(0,1); ids: integers in [0, high); ones: all ones
    high: int = 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # torchvision | transformers
    builder: str  # torchvision.models function, or a key of _HF_BUILDERS
    inputs: tuple
    description: str
    kwargs: dict = field(default_factory=dict, hash=False)

    def input_shapes(self) -> str:
        """The ``--input-shapes`` string of the fluidml-tvm CLI."""
        return " ".join(f"{i.name}:[{','.join(str(d) for d in i.shape)}]" for i in self.inputs)


_IMAGE = (Input("image", (1, 3, 224, 224)),)
_SEQ = 128


def _tv(name, builder, description, **kwargs):
    return ModelSpec(name, "torchvision", builder, _IMAGE, description, kwargs)


MODELS = {m.name: m for m in (
    _tv("mobilenet_v3_small", "mobilenet_v3_small", "MobileNetV3-Small (torchvision)"),
    _tv("mobilenet_v3_large", "mobilenet_v3_large", "MobileNetV3-Large (torchvision)"),
    _tv("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0 (torchvision)"),
    _tv("shufflenet_v2_x1_0", "shufflenet_v2_x1_0", "ShuffleNetV2 x1.0 (torchvision)"),
    _tv("regnet_y_400mf", "regnet_y_400mf", "RegNetY-400MF (torchvision)"),
    _tv("mnasnet1_0", "mnasnet1_0", "MNASNet 1.0 (torchvision)"),
    _tv("resnet18", "resnet18", "ResNet-18 (torchvision)"),
    _tv("resnet50", "resnet50", "ResNet-50 (torchvision)"),
    _tv("densenet121", "densenet121", "DenseNet-121 (torchvision)"),
    _tv("squeezenet1_1", "squeezenet1_1", "SqueezeNet 1.1 (torchvision)"),
    _tv("googlenet", "googlenet", "GoogLeNet (torchvision, no aux heads)",
        aux_logits=False, init_weights=True),
    _tv("convnext_tiny", "convnext_tiny", "ConvNeXt-Tiny (torchvision)"),
    _tv("vit_b_16", "vit_b_16", "ViT-B/16 (torchvision)"),
    ModelSpec("distilbert", "transformers", "distilbert",
              (Input("input_ids", (1, _SEQ), "int64", "ids", 30522),
               Input("attention_mask", (1, _SEQ), "int64", "ones")),
              "DistilBERT-base (transformers DistilBertModel, seq 128, last hidden state)"),
    ModelSpec("whisper_tiny_encoder", "transformers", "whisper_encoder",
              (Input("input_features", (1, 80, 3000)),),
              "Whisper-tiny encoder (transformers WhisperModel(config).encoder, 80x3000 mel)"),
    ModelSpec("t5_small_encoder", "transformers", "t5_encoder",
              (Input("input_ids", (1, _SEQ), "int64", "ids", 32128),
               Input("attention_mask", (1, _SEQ), "int64", "ones")),
              "T5-small encoder (transformers T5EncoderModel, seq 128, last hidden state)"),
)}

#: a few small models for --quick runs and smoke tests
QUICK = ("squeezenet1_1", "mobilenet_v3_small")


def select(models: str | None) -> list:
    """The specs named in a comma-separated list (all when empty); unknown names raise."""
    if not models:
        return list(MODELS.values())
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    return [MODELS[n] for n in names]


def make_inputs(spec: ModelSpec, seed: int = SEED, shape_override=None) -> dict:
    """Seeded inputs for ``spec`` as numpy arrays keyed by input name."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in spec.inputs:
        shape = tuple((shape_override or {}).get(i.name, i.shape))
        if i.kind == "ids":
            out[i.name] = rng.integers(0, i.high, shape).astype(i.dtype)
        elif i.kind == "ones":
            out[i.name] = np.ones(shape, dtype=i.dtype)
        else:
            out[i.name] = rng.standard_normal(shape).astype(i.dtype)
    return out


# ---- building and exporting (torch needed) ------------------------------------------------------
class _LastHidden:
    """Wraps a transformers model so that the export has one output, the last hidden state."""

    @staticmethod
    def wrap(model):
        import torch

        class LastHidden(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(*args).last_hidden_state

        return LastHidden(model)


def _hf_distilbert():
    import transformers as tf

    cfg = tf.DistilBertConfig(attn_implementation="eager")  # distilbert-base-uncased sizes
    return _LastHidden.wrap(tf.DistilBertModel(cfg))


def _hf_whisper_encoder():
    import transformers as tf

    cfg = tf.WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6,
                           encoder_ffn_dim=1536, decoder_layers=4, decoder_attention_heads=6,
                           decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                           attn_implementation="eager")  # whisper-tiny sizes
    return _LastHidden.wrap(tf.WhisperModel(cfg).get_encoder())


def _hf_t5_encoder():
    import transformers as tf

    cfg = tf.T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64,
                      vocab_size=32128, feed_forward_proj="relu",
                      attn_implementation="eager")  # t5-small sizes
    return _LastHidden.wrap(tf.T5EncoderModel(cfg))


_HF_BUILDERS = {"distilbert": _hf_distilbert, "whisper_encoder": _hf_whisper_encoder,
                "t5_encoder": _hf_t5_encoder}


def build(spec: ModelSpec, seed: int = SEED):
    """The reference model with seeded random weights, in eval mode.

    The reference initializers alone give degenerate outputs: with BatchNorm's initial running
    statistics (mean 0, variance 1) nothing is normalized at inference, and activations shrink
    through depth (MobileNetV3 logits ~1e-9, EfficientNet-B0 ~1e-14, MNASNet ~1e-8; tiny values
    become denormals, which slow some engines down and make output comparisons meaningless), and
    ViT's classifier head is initialized to zeros (all-zero logits). So :func:`_calibrate` sets
    every BatchNorm's running statistics from seeded random batches (train-mode forward passes,
    cumulative average) and re-initializes all-zero weight matrices with N(0, 0.02).
    """
    import torch

    torch.manual_seed(seed)
    if spec.family == "torchvision":
        import torchvision

        model = getattr(torchvision.models, spec.builder)(weights=None, **spec.kwargs)
    else:
        model = _HF_BUILDERS[spec.builder]()
    model._corpus_calibration = _calibrate(model, spec, seed)
    return model.eval()


def _calibrate(model, spec: ModelSpec, seed: int, batches: int = 2, batch: int = 4) -> dict:
    """Re-initialize all-zero weights; set BatchNorm running stats from random batches."""
    import torch

    zeroed = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
                zeroed.append(name)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for b in range(batches):
                shapes = {i.name: (batch,) + tuple(i.shape[1:]) for i in spec.inputs}
                x = make_inputs(spec, seed=seed + 1 + b, shape_override=shapes)
                model(*(torch.from_numpy(x[i.name]) for i in spec.inputs))
        model.eval()
    return {"reinitialized": zeroed, "batchnorms": len(bns)}


def _np_outputs(result) -> list:
    if isinstance(result, (tuple, list)):
        return [o for r in result for o in _np_outputs(r)]
    return [result.detach().cpu().numpy()]


def export(spec: ModelSpec, out: str, opset: int = DEFAULT_OPSET,
           exporter: str = DEFAULT_EXPORTER, shape_override=None, log=print) -> dict:
    """Export ``spec`` to ``out/NAME.onnx``; write NAME.json, NAME.inputs.npz, NAME.torch.npz.

    ``shape_override`` ({input name: shape}) exports at other shapes (tests use a small image).
    Returns the manifest written to NAME.json.
    """
    import warnings

    import numpy as np
    import onnx
    import torch

    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    model = build(spec)
    inputs = make_inputs(spec, shape_override=shape_override)
    args = tuple(torch.from_numpy(inputs[i.name]) for i in spec.inputs)
    with torch.no_grad():
        ref = _np_outputs(model(*args))
    out_names = ["output"] if len(ref) == 1 else [f"output{i}" for i in range(len(ref))]
    path = os.path.join(out, f"{spec.name}.onnx")
    tmp = path + ".tmp.onnx"
    kw = {"dynamo": exporter == "dynamo"}
    if exporter == "dynamo":
        kw["external_data"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # not under no_grad: there nn.MultiheadAttention takes its fused fast path
        # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export
        torch.onnx.export(model, args, tmp, opset_version=opset,
                          input_names=[i.name for i in spec.inputs], output_names=out_names,
                          do_constant_folding=True, **kw)
    proto = onnx.load(tmp)
    onnx.checker.check_model(proto)
    os.replace(tmp, path)
    np.savez(os.path.join(out, f"{spec.name}.inputs.npz"), **inputs)
    np.savez(os.path.join(out, f"{spec.name}.torch.npz"),
             **{n: r for n, r in zip(out_names, ref)})
    import collections

    manifest = {
        "model": spec.name, "description": spec.description, "family": spec.family,
        "onnx": os.path.basename(path), "bytes": os.path.getsize(path),
        "exporter": exporter, "opset": [o.version for o in proto.opset_import if o.domain == ""][0],
        "requested_opset": opset,
        "inputs": [{"name": i.name, "shape": list(inputs[i.name].shape), "dtype": i.dtype}
                   for i in spec.inputs],
        "input_shapes": " ".join(f"{k}:[{','.join(str(d) for d in v.shape)}]"
                                 for k, v in inputs.items()),
        "outputs": [{"name": n, "shape": list(r.shape), "dtype": str(r.dtype)}
                    for n, r in zip(out_names, ref)],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "onnx_nodes": len(proto.graph.node),
        "onnx_ops": dict(collections.Counter(n.op_type for n in proto.graph.node).most_common()),
        "seed": SEED, "calibration": getattr(model, "_corpus_calibration", None),
        "torch": torch.__version__, "onnx_version": onnx.__version__,
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    try:
        import torchvision
        import transformers

        manifest.update(torchvision=torchvision.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    with open(os.path.join(out, f"{spec.name}.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    log(f"[corpus] {spec.name}: {manifest['onnx_nodes']} nodes, opset {manifest['opset']}, "
        f"{manifest['bytes'] / 1e6:.1f} MB, {manifest['export_seconds']:.1f} s -> {path}")
    return manifest


def read_manifest(out: str, name: str) -> dict:
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run 'python benchmarks/corpus.py export "
                         f"--models {name} --out {out}' first")
    with open(path) as f:
        return json.load(f)


# ---- the fluidml report: which conv/matmul kernels fell back ------------------------------------
#: kernel names that contain one of these carry a convolution or a matrix product
HEAVY = re.compile(r"conv[123]d_transpose|conv[123]d|matmul|dense|batch_matmul")
#: schedule rules that are generic fallbacks for such a kernel
GENERIC_RULES = ("reduction", "injective", "none")
_LINE = re.compile(r"^(?P<kernel>[\w.]+): (?P<rule>[\w-]+) - (?P<reason>.*)$")


def parse_schedule(report: str) -> list:
    """The ``## schedule`` section of ``fluidml-tvm compile --report``: one dict per kernel
    (``kernel``, ``rule``, ``reason``), in report order."""
    rows, inside = [], False
    for line in report.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## schedule"
            continue
        if inside:
            m = _LINE.match(line.strip())
            if m:
                rows.append(m.groupdict())
    return rows


def fallbacks(rows: list) -> list:
    """Kernels with a conv/matmul in their name that got a generic rule."""
    return [r for r in rows if r["rule"] in GENERIC_RULES and HEAVY.search(r["kernel"])]


# ---- kernel shapes from the IR dump (--dump-ir) --------------------------------------------------
_FUNC = re.compile(r"^    def (\w+)\((.*)\):\s*$")
_BUF = re.compile(r"(\w+): T\.Buffer\(\(([^()]*(?:\([^()]*\)[^()]*)*)\), \"(\w+)\"\)")
_INT = re.compile(r"T\.int64\((\d+)\)|(?<![\w.])(\d+)(?![\w.])")
_BLOCK = re.compile(r'with T\.sblock\("(\w+)"\):')
_REMAP = re.compile(r'T\.axis\.remap\("(\w+)", \[([^\]]*)\]\)')
_GRID = re.compile(r"for ([\w, ]+) in T\.grid\((.*)\):")


def _ints(text: str) -> list:
    return [int(a or b) for a, b in _INT.findall(text)]


def primfunc_shapes(ir_text: str) -> dict:
    """{PrimFunc name: {"buffers": [(name, shape, dtype)], "blocks": [reduction block info]}}
    from a TVMScript module dump; a reduction block records its name, iterator kinds
    (``SSSSRRR``), extents and the text of its reads (which show strides and dilations)."""
    funcs, current, grid = {}, None, {}
    lines = ir_text.splitlines()
    for i, line in enumerate(lines):
        m = _FUNC.match(line)
        if m:
            current = {"buffers": [(b, _ints(s), dt) for b, s, dt in _BUF.findall(m.group(2))],
                       "blocks": []}
            funcs[m.group(1)] = current
            grid = {}
            continue
        if current is None:
            continue
        if line.startswith("    def ") or line.startswith("    @"):
            current = None if not _FUNC.match(line) else current
            continue
        g = _GRID.search(line)
        if g:
            names = [v.strip() for v in g.group(1).split(",")]
            grid = dict(zip(names, _ints(g.group(2))))
        b = _BLOCK.search(line)
        if not b:
            continue
        for nxt in lines[i + 1:i + 4]:
            r = _REMAP.search(nxt)
            if r and "R" in r.group(1):
                loops = [v.strip() for v in r.group(2).split(",")]
                reads = next((x.strip() for x in lines[i + 1:i + 6] if "T.reads(" in x), "")
                current["blocks"].append({
                    "block": b.group(1), "iters": r.group(1),
                    "extents": [grid.get(v) for v in loops], "reads": reads})
                break
    return funcs


def describe_kernel(info: dict | None) -> str:
    """One line: the reduction block, its loop extents and the buffers, e.g.
    ``conv2d_nchw SSSSRRR [1,8,16,16,8,1,1]; lv21 [1,8,16,16], B [8,8,1,1] -> out [1,8,16,16]``."""
    if not info:
        return "(not found in the IR dump)"
    bufs = ", ".join(f"{n} [{','.join(map(str, s))}]" for n, s, _ in info["buffers"])
    blocks = "; ".join(f"{b['block']} {b['iters']} [{','.join(map(str, b['extents']))}]"
                       for b in info["blocks"])
    return f"{blocks or '(no reduction block)'}; buffers {bufs}"


def conv_geometry(info: dict | None) -> dict | None:
    """For a conv reduction block in NCHW: channels, groups, kernel, stride, dilation and the
    conv's own input/output sizes. Output size, kernel and input channels per group come from the
    block's loop extents (``[n, f, y, x, rc, ry, rx]``), stride/dilation from its reads; the input
    is the PrimFunc's first buffer (other buffers of a fused kernel belong to its epilogue)."""
    if not info:
        return None
    for blk in info["blocks"]:
        if "conv" not in blk["block"]:
            continue
        # reads like pad_temp[v_nn, v_rc, v_yy * T.int64(2) + v_ry, v_xx * T.int64(2) + v_rx]
        reads = blk["reads"]
        sy = re.search(r"v_yy \* T\.int64\((\d+)\)", reads)
        dy = re.search(r"v_ry \* T\.int64\((\d+)\)", reads)
        geo = {"block": blk["block"], "stride": int(sy.group(1)) if sy else 1,
               "dilation": int(dy.group(1)) if dy else 1}
        data = info["buffers"][0][1] if info["buffers"] else None
        ext = blk["extents"]
        if "nchw" in blk["block"] and len(ext) == 7 and None not in ext and data and len(data) == 4:
            geo.update(in_channels=data[1], out_channels=ext[1], kernel=ext[5:7],
                       groups=data[1] // ext[4] if ext[4] else None, input_hw=data[2:],
                       output_hw=ext[2:4])
        return geo
    return None


def matmul_geometry(info: dict | None) -> dict | None:
    """For a matmul/dense reduction block: batch dims, M, N (the last two spatial extents) and K
    (the reduction extent), from the block's iterator kinds and extents."""
    if not info:
        return None
    for blk in info["blocks"]:
        if not re.search(r"matmul|dense", blk["block"]) or None in blk["extents"]:
            continue
        sp = [e for k, e in zip(blk["iters"], blk["extents"]) if k == "S"]
        red = [e for k, e in zip(blk["iters"], blk["extents"]) if k == "R"]
        if len(sp) < 2 or not red:
            return None
        bufs = info["buffers"]
        if len(bufs) > 1 and len(bufs[1][1]) == 2:  # a 2-D weight: every leading axis is a row
            return {"block": blk["block"], "batch": [], "M": math.prod(sp[:-1]),
                    "rows": sp[:-1], "N": sp[-1], "K": math.prod(red)}
        return {"block": blk["block"], "batch": sp[:-2], "M": sp[-2], "N": sp[-1],
                "K": math.prod(red)}
    return None


def reason_category(fb: dict) -> str:
    """The clause of a fallback's reason that says why the kernel's own rule did not apply
    (``not conv2d: ...`` for a conv, ``not matmul: ...`` for a matmul), numbers blanked, so
    fallbacks can be counted by cause."""
    want = "not matmul" if re.search(r"matmul|dense", fb["kernel"]) and "conv" not in \
        fb["kernel"] else "not conv2d"
    m = re.search(want + r": ([^;|]*)", fb["reason"])
    text = m.group(1).strip() if m else fb["reason"].split("|")[0].strip()
    return f"{want}: " + re.sub(r"\d+", "N", text) if m else text


def inventory(workdir: str, name: str) -> dict | None:
    """Fallbacks and rule counts re-derived from a check's saved report and IR dump."""
    rp = os.path.join(workdir, f"{name}.report.md")
    if not os.path.exists(rp):
        return None
    with open(rp) as f:
        rows = parse_schedule(f.read())
    ir = _pre_schedule_ir(os.path.join(workdir, f"{name}.ir"))
    shapes = primfunc_shapes(ir) if ir else {}
    heavy = [r for r in rows if HEAVY.search(r["kernel"])]
    fbs = []
    for r in fallbacks(rows):
        info = shapes.get(r["kernel"])
        fbs.append({**r, "shape": describe_kernel(info), "conv": conv_geometry(info),
                    "matmul": matmul_geometry(info),
                    "epilogue": [(n, s) for n, s, _ in (info or {}).get("buffers", [])]})
    return {"kernels": len(rows), "rules": _count(r["rule"] for r in rows),
            "heavy_kernels": len(heavy), "heavy_rules": _count(r["rule"] for r in heavy),
            "fallbacks": fbs}


# ---- check ---------------------------------------------------------------------------------------
def _diff(a, b) -> dict:
    import numpy as np

    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return {"max_abs": None, "shape_mismatch": [list(a64.shape), list(b64.shape)]}
    d = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    scale = float(np.abs(b64).max()) if b64.size else 0.0
    return {"max_abs": d, "ref_max_abs": scale, "rel": d / scale if scale else None}


def _diff_lists(got: list, ref: list) -> dict:
    ds = [_diff(g, r) for g, r in zip(got, ref)]
    if len(got) != len(ref):
        return {"max_abs": None, "error": f"{len(got)} outputs vs {len(ref)}"}
    worst = max(ds, key=lambda d: -1 if d.get("max_abs") is None else d["max_abs"])
    return worst


def _load_npz_list(path: str, names=None) -> list:
    import numpy as np

    with np.load(path) as d:
        keys = names or sorted(d.files)
        return [d[k] for k in keys]


def compile_analytic(onnx_path: str, manifest: dict, workdir: str, threads: int,
                     timeout: float, extra_pass_config=()) -> dict:
    """``fluidml-tvm compile --pass-config fluidml.cost=analytic --report --dump-ir`` in a
    subprocess; returns ok, seconds, the schedule rows, the fallbacks with shapes and the lib."""
    name = manifest["model"]
    lib = os.path.join(workdir, f"{name}.analytic.so")
    dump = os.path.join(workdir, f"{name}.ir")
    cmd = [sys.executable, "-m", "fluidml_tvm.cli", "compile", onnx_path, "-o", lib, "--report",
           "--input-shapes", manifest["input_shapes"], "--pass-config", "fluidml.cost=analytic",
           "--dump-ir", dump]
    for kv in extra_pass_config:
        cmd += ["--pass-config", kv]
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s", "seconds": timeout}
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, f"{name}.report.md"), "w") as f:
        f.write(proc.stdout)
    with open(os.path.join(workdir, f"{name}.compile.log"), "w") as f:
        f.write(proc.stderr)
    res = {"ok": proc.returncode == 0 and os.path.exists(lib), "seconds": round(seconds, 1),
           "command": " ".join(cmd), "lib": lib}
    if not res["ok"]:
        tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-5:]
        res["error"] = " | ".join(tail) or f"exit {proc.returncode}"
        return res
    rows = parse_schedule(proc.stdout)
    res["kernels"] = len(rows)
    res["rules"] = dict(sorted(_count(r["rule"] for r in rows).items()))
    ir = _pre_schedule_ir(dump)
    shapes = primfunc_shapes(ir) if ir else {}
    res["fallbacks"] = []
    for r in fallbacks(rows):
        info = shapes.get(r["kernel"])
        res["fallbacks"].append({**r, "shape": describe_kernel(info),
                                 "conv": conv_geometry(info)})
    heavy = [r for r in rows if HEAVY.search(r["kernel"])]
    res["heavy_kernels"] = len(heavy)
    res["heavy_rules"] = dict(sorted(_count(r["rule"] for r in heavy).items()))
    return res


def _count(items) -> dict:
    import collections

    return dict(collections.Counter(items))


def _pre_schedule_ir(dump: str) -> str | None:
    """The IR just before ``fluidml.schedule`` (fused, legalized, unscheduled PrimFuncs)."""
    if not os.path.isdir(dump):
        return None
    files = sorted(os.listdir(dump))
    idx = next((i for i, f in enumerate(files) if "fluidml.schedule" in f), None)
    if not idx:
        return None
    with open(os.path.join(dump, files[idx - 1])) as f:
        return f.read()


def check_model(spec: ModelSpec, out: str, workdir: str, threads: int = 2,
                repeat: int = 10, budget: float = 10.0, compile_timeout: float = 1800,
                log=print, skip_compile: bool = False) -> dict:
    """ORT vs torch, OpenVINO vs ORT (timed, own processes), fluidml analytic compile + run."""
    manifest = read_manifest(out, spec.name)
    onnx_path = os.path.join(out, manifest["onnx"])
    inputs = os.path.join(out, f"{spec.name}.inputs.npz")
    out_names = [o["name"] for o in manifest["outputs"]]
    torch_out = _load_npz_list(os.path.join(out, f"{spec.name}.torch.npz"), out_names)
    row = {"model": spec.name, "description": spec.description, "exported": True,
           "opset": manifest["opset"], "exporter": manifest["exporter"],
           "inputs": manifest["input_shapes"], "onnx_nodes": manifest["onnx_nodes"],
           "parameters": manifest["parameters"], "engines": {}}
    os.makedirs(workdir, exist_ok=True)
    ort_out = None
    for engine in ("ort", "openvino"):
        if engine == "openvino" and not corpus_engines.have_openvino():
            row["engines"][engine] = {"ok": False, "error": "openvino not installed"}
            continue
        res = corpus_engines.spawn({"engine": engine, "model": onnx_path, "inputs": inputs,
                                    "threads": threads, "repeat": repeat, "budget": budget,
                                    "outputs": os.path.join(workdir, f"{spec.name}.{engine}.npz")},
                                   workdir, f"{spec.name}.{engine}", timeout=1800)
        if res.get("ok"):
            got = _load_npz_list(res["outputs"])
            res["vs_torch"] = _diff_lists(got, torch_out)
            if engine == "ort":
                ort_out = got
            elif ort_out is not None:
                res["vs_ort"] = _diff_lists(got, ort_out)
        row["engines"][engine] = res
        log(f"[check] {spec.name}: {engine} " + (
            f"{res['median_ms']:.2f} ms, vs torch {res['vs_torch']['max_abs']:.2e}"
            if res.get("ok") else f"FAILED: {res.get('error')}"))
    if skip_compile:
        return row
    comp = compile_analytic(onnx_path, manifest, workdir, threads, compile_timeout)
    row["fluidml_analytic"] = comp
    if comp["ok"]:
        log(f"[check] {spec.name}: fluidml analytic compile {comp['seconds']:.0f} s, "
            f"{comp['kernels']} kernels, {len(comp['fallbacks'])} conv/matmul fallbacks")
        res = corpus_engines.spawn({"engine": "fluidml", "lib": comp["lib"], "inputs": inputs,
                                    "threads": threads, "repeat": 3, "budget": budget,
                                    "outputs": os.path.join(workdir, f"{spec.name}.analytic.npz")},
                                   workdir, f"{spec.name}.analytic", timeout=1800)
        if res.get("ok") and ort_out is not None:
            res["vs_ort"] = _diff_lists(_load_npz_list(res["outputs"]), ort_out)
        row["engines"]["fluidml_analytic"] = res
        if res.get("ok"):
            prof = corpus_engines.profile(comp["lib"], inputs, threads, top=8, number=1)
            row["analytic_profile"] = prof
        log(f"[check] {spec.name}: analytic library " + (
            f"{res['median_ms']:.2f} ms, vs ORT {res.get('vs_ort', {}).get('max_abs')}"
            if res.get("ok") else f"FAILED: {res.get('error')}"))
    else:
        log(f"[check] {spec.name}: fluidml analytic compile FAILED: {comp.get('error')}")
    return row


# ---- the baseline inventory (markdown) ---------------------------------------------------
def _fmt_diff(d: dict | None) -> str:
    if not d or d.get("max_abs") is None:
        return "-" if not d else f"n/a ({d.get('error') or d.get('shape_mismatch')})"
    rel = f" (rel {d['rel']:.0e})" if d.get("rel") is not None else ""
    return f"{d['max_abs']:.1e}{rel}"


def _fmt_ms(m: dict) -> str:
    if "median_ms" not in m:
        return "-"
    low = f" ({m['min_ms']:.2f})" if m.get("min_ms") is not None else ""
    return f"{m['median_ms']:.2f}{low}"


def _fmt_op(fb: dict) -> str:
    c, m = fb.get("conv"), fb.get("matmul")
    if c and "in_channels" in c:
        k = "x".join(map(str, c["kernel"]))
        kind = "grouped conv2d" if c["groups"] not in (1, None) else "conv2d"
        if c["groups"] and c["groups"] == c["in_channels"]:
            kind = "depthwise conv2d"
        g = f", groups {c['groups']} ({c['in_channels'] // c['groups']} ch/group)" \
            if c["groups"] not in (1, None) else ""
        dil = f", dilation {c['dilation']}" if c["dilation"] != 1 else ""
        return (f"{kind} {k} stride {c['stride']}{dil}, {c['in_channels']}->{c['out_channels']} "
                f"ch{g}, {c['input_hw'][0]}x{c['input_hw'][1]} -> "
                f"{c['output_hw'][0]}x{c['output_hw'][1]}")
    if m:
        b = f"batch {'x'.join(map(str, m['batch']))}, " if m["batch"] and \
            math.prod(m["batch"]) > 1 else ""
        rows = m.get("rows") or []
        r = f" (rows {'x'.join(map(str, rows))})" if len([x for x in rows if x > 1]) > 1 else ""
        return f"{m['block']} {b}M={m['M']}{r} N={m['N']} K={m['K']}"
    return fb.get("shape", "?")


def _fmt_others(fb: dict) -> str:
    """The fused kernel's buffers beyond the conv/matmul input and weight (epilogue operands)."""
    bufs = fb.get("epilogue") or []
    return ", ".join(f"{n} [{','.join(map(str, s))}]" for n, s in bufs)


def baseline_markdown(found: dict, out: str, info: dict | None = None) -> str:
    """The per-model inventory written to benchmarks/results/<date>-corpus-baseline.md."""
    import collections

    work = os.path.join(out, "work")
    info = info or {}
    lines = ["# Corpus baseline: export, ONNX Runtime, OpenVINO, fluidml analytic compile", ""]
    if info:
        lines += [f"- commit `{info.get('commit')}`; {info.get('date')}",
                  f"- host: {info.get('cpu')} ({info.get('machine')}, {info.get('cores')} cores; "
                  f"ISA {', '.join(info.get('isa') or [])})",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in
                                             (info.get("versions") or {}).items() if v), ""]
    loads = [row["loadavg"][0] for row in found.values() if row.get("loadavg")]
    rels = [(row.get("engines", {}).get(e, {}).get(k) or {}).get("rel")
            for row in found.values() for e, k in (("ort", "vs_torch"), ("openvino", "vs_ort"),
                                                   ("fluidml_analytic", "vs_ort"))]
    rels = [r for r in rels if r is not None]
    counts = sorted({m.get("samples") for row in found.values()
                     for e, m in row.get("engines", {}).items()
                     if e in ("ort", "openvino") and m.get("samples")})
    samples = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}") \
        if counts else "?"
    lines += [
        "## Method and caveats", "",
        "- `python benchmarks/corpus.py export` then `check` then `baseline` (this file). Each "
        "model: built from its reference code with seeded random weights (BatchNorm statistics "
        "calibrated on random batches, see benchmarks/README.md), exported with the TorchScript "
        "exporter at opset 17, batch 1, static shapes; no onnxsim or shape inference on the "
        "exported files.",
        "- ORT and OpenVINO: each in a fresh process, 2 threads (ORT intra_op_num_threads; "
        "OpenVINO CPU, INFERENCE_PRECISION_HINT f32, INFERENCE_NUM_THREADS 2, latency hint), "
        f"median (min) of {samples} timed calls after one warm-up (numpy in, numpy out). "
        "**The machine was shared and loaded** (1-min load average on 2 cores after each model: "
        + (f"{min(loads):.2f}-{max(loads):.2f}" if loads else "n/a")
        + "): absolute latencies are indicative only; repeat them on a quiet host.",
        "- fluidml: `fluidml-tvm compile MODEL.onnx --input-shapes ... --pass-config "
        "fluidml.cost=analytic --report --dump-ir DIR`. Analytic costs skip kernel measurement, "
        "and with them the layout stage only reports its plan (every conv stays NCHW): a default "
        "(measured) compile may pick other rules, or NHWC for some convs, so its kernel list can "
        "differ. The analytic library was run and compared with ONNX Runtime, and profiled "
        "(`fluidml-tvm run --profile`, 1 run) to show which kernels dominate; its latency is not "
        "fluidml's (analytic schedules, no measurement).",
        "- A *fallback* is a kernel whose name contains conv1d/conv2d/conv2d_transpose/matmul/"
        "dense and whose schedule rule is `reduction`, `injective` or `none`. Names are the "
        "report's (one PrimFunc may run several times; the profile gives the calls). Shapes come "
        "from the IR just before `fluidml.schedule`: conv geometry from the reduction block's "
        "loop extents and index expressions, matmul M/N/K from its spatial and reduction extents; "
        "*PrimFunc buffers* lists every buffer of the fused kernel (input, weight, bias, and the "
        "epilogue's operands, e.g. the feature map an SE gate multiplies).",
        "- Tolerance: outputs are compared as max abs difference and relative to max |reference|; "
        "all models agree within rel "
        + (f"{max(rels):.0e}" if rels else "n/a") + " (ORT vs torch, OpenVINO vs ORT, fluidml "
        "analytic vs ORT); the bar used is rel 1e-4.", ""]
    invs = {}
    for name, row in found.items():
        inv = inventory(work, name)
        if inv is None and row.get("fluidml_analytic", {}).get("ok"):
            inv = row["fluidml_analytic"]
        invs[name] = inv
    lines += ["## Summary", "",
              "| model | exported (opset, ONNX nodes, params) | ORT vs torch | OpenVINO vs ORT | "
              "ORT ms median (min) | OpenVINO ms median (min) | load (1-min) | "
              "fluidml analytic compile | analytic lib vs ORT | conv/matmul kernels: rules | "
              "fallbacks |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in found.items():
        en = row.get("engines", {})
        ort, ov = en.get("ort", {}), en.get("openvino", {})
        comp = row.get("fluidml_analytic") or {}
        inv = invs.get(name) or {}
        la = row.get("loadavg") or [float("nan")]
        comp_s = (f"OK, {comp['seconds']:.0f} s, {inv.get('kernels')} kernels" if comp.get("ok")
                  else f"FAILED: {comp.get('error', 'not run')}")
        heavy = ", ".join(f"{k} {v}" for k, v in sorted((inv.get("heavy_rules") or {}).items()))
        lines.append(
            f"| {name} | yes ({row.get('opset')}, {row.get('onnx_nodes')}, "
            f"{row.get('parameters', 0) / 1e6:.1f} M) | {_fmt_diff(ort.get('vs_torch'))} | "
            f"{_fmt_diff(ov.get('vs_ort')) if ov.get('ok') else ov.get('error', '-')} | "
            f"{_fmt_ms(ort)} | {_fmt_ms(ov)} | "
            f"{la[0]:.2f} | {comp_s} | "
            f"{_fmt_diff(en.get('fluidml_analytic', {}).get('vs_ort'))} | "
            f"{inv.get('heavy_kernels', '-')}: {heavy or '-'} | "
            f"{len(inv.get('fallbacks') or [])} |")
    cats = collections.defaultdict(list)
    for name, inv in invs.items():
        for fb in (inv or {}).get("fallbacks") or []:
            cats[(fb["rule"], reason_category(fb))].append(name)
    lines += ["", "## Fallbacks by cause (all models)", "",
              "The clause of the report's reason that says why the kernel's own rule "
              "(conv2d / matmul) did not take it; numbers blanked.", "",
              "| rule taken | why not conv2d / matmul | kernels | models |", "|---|---|---|---|"]
    for (rule, cat), names in sorted(cats.items(), key=lambda kv: -len(kv[1])):
        per = collections.Counter(names)
        lines.append(f"| {rule} | {cat} | {len(names)} | "
                     + ", ".join(f"{n} ({c})" for n, c in per.items()) + " |")
    lines += ["", "## Per model", ""]
    for name, row in found.items():
        inv = invs.get(name) or {}
        comp = row.get("fluidml_analytic") or {}
        lines += [f"### {name}", "", f"{row.get('description', '')}; inputs "
                  f"`{row.get('inputs')}`; {row.get('exporter')} exporter, opset "
                  f"{row.get('opset')}.", ""]
        if not comp.get("ok"):
            lines += [f"fluidml analytic compile: {comp.get('error', 'not run')}", ""]
            continue
        lines.append(f"All kernels by rule: {', '.join(f'{k} {v}' for k, v in sorted((inv.get('rules') or {}).items()))}; "  # noqa: E501
                     f"conv/matmul kernels by rule: "
                     f"{', '.join(f'{k} {v}' for k, v in sorted((inv.get('heavy_rules') or {}).items()))}.")  # noqa: E501
        fbs = inv.get("fallbacks") or []
        if not fbs:
            lines += ["", "No conv/matmul kernel fell back to a generic rule.", ""]
        else:
            lines += ["", "| kernel | rule | op and shapes | PrimFunc buffers | reason (report) |",
                      "|---|---|---|---|---|"]
            for fb in fbs:
                lines.append(f"| {fb['kernel']} | {fb['rule']} | {_fmt_op(fb)} | "
                             f"{_fmt_others(fb)} | {fb['reason'].replace('|', '&#124;')} |")
            lines.append("")
        prof = row.get("analytic_profile") or {}
        if prof.get("ok"):
            lines += ["Slowest kernels of the analytic-schedule library (`fluidml-tvm run "
                      "--profile`, 1 run, loaded machine; analytic schedules, not the measured "
                      "default):", "", "| kernel | calls | ms | share |", "|---|---|---|---|"]
            lines += [f"| {k['kernel']} | {k['calls']} | {k['total_ms']:.2f} | {k['share']:.1f}% |"
                      for k in prof["rows"]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- command line --------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the corpus models, their inputs and sources")
    e = sub.add_parser("export", help="build, seed and export models to ONNX")
    c = sub.add_parser("check", help="ORT/OpenVINO/fluidml-analytic checks of exported models")
    for q in (e, c):
        q.add_argument("--models", default=None, help="comma-separated names (default: all)")
        q.add_argument("--out", default=DEFAULT_OUT, help=f"cache directory ({DEFAULT_OUT})")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    e.add_argument("--exporter", default=DEFAULT_EXPORTER, choices=("torchscript", "dynamo"))
    e.add_argument("--force", action="store_true", help="export again even if NAME.onnx exists")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--repeat", type=int, default=10)
    c.add_argument("--budget", type=float, default=10.0)
    c.add_argument("--json", default=None, help="write the findings here (default OUT/check.json)")
    c.add_argument("--skip-compile", action="store_true", help="only the ORT/OpenVINO checks")
    b = sub.add_parser("baseline", help="the inventory markdown from a check's findings")
    b.add_argument("--out", default=DEFAULT_OUT, help=f"cache directory ({DEFAULT_OUT})")
    b.add_argument("--json", default=None, help="findings of check (default OUT/check.json)")
    b.add_argument("-o", "--output", default=None,
                   help="markdown file, with the findings and inventory as JSON beside it "
                        "(default: markdown to stdout)")
    args = p.parse_args(argv)
    if args.command == "list":
        for s in MODELS.values():
            print(f"{s.name:<22} {s.family:<12} {s.input_shapes():<44} {s.description}")
        return 0
    if args.command == "baseline":
        from run_corpus import host_info

        with open(args.json or os.path.join(args.out, "check.json")) as f:
            found = json.load(f)
        info = host_info(2)
        text = baseline_markdown(found, args.out, info)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text)
            work = os.path.join(args.out, "work")
            data = {"info": info, "models": {
                n: {**row, "inventory": inventory(work, n)} for n, row in found.items()}}
            with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
                json.dump(data, f, indent=1)
        else:
            print(text)
        return 0
    specs = select(args.models)
    if args.command == "export":
        failed = []
        for s in specs:
            if not args.force and os.path.exists(os.path.join(args.out, f"{s.name}.json")):
                print(f"[corpus] {s.name}: already exported (--force to redo)")
                continue
            try:
                export(s, args.out, opset=args.opset, exporter=args.exporter)
            except Exception as err:  # one model's failure is a finding, not the end
                failed.append(s.name)
                print(f"[corpus] {s.name}: export FAILED: {type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
        return 1 if failed else 0
    path = args.json or os.path.join(args.out, "check.json")
    found = {}
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
    for s in specs:
        old = found.get(s.name) or {}
        found[s.name] = check_model(s, args.out, os.path.join(args.out, "work"), args.threads,
                                    args.repeat, args.budget, skip_compile=args.skip_compile)
        if args.skip_compile:  # keep the fluidml findings of an earlier full check
            for k in ("fluidml_analytic", "analytic_profile"):
                if k in old:
                    found[s.name][k] = old[k]
            if "fluidml_analytic" in old.get("engines", {}):
                found[s.name]["engines"]["fluidml_analytic"] = old["engines"]["fluidml_analytic"]
        found[s.name]["loadavg"] = list(os.getloadavg())
        with open(path, "w") as f:
            json.dump(found, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
