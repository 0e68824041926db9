"""Issue 13: no convolution or matmul falls back to the generic loop nests, whatever its sizes.

Every case is a tiny ONNX model compiled end to end (``fluidml_tvm.compile``) and run; each
asserts (a) that every conv/matmul kernel's schedule decision is its family's rule - never
``reduction``, ``injective`` or ``none`` - and says what it padded where it did, and (b) that
the outputs match ONNX Runtime. ``fluidml.cost=analytic`` (the analytic first candidate) except
in :func:`test_measured_choice_matches_ort`, where the candidates are timed and the fastest
taken."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fluidml_tvm

from ..models import fused, run_ort
from . import odd_models as om

FAMILY = {"conv2d", "conv2d_transpose", "depthwise", "matmul", "conv_pool", "conv2d_nchwc"}
GENERIC = {"reduction", "injective", "none"}


def _compile(model, tmp_path, *extra):
    cfg = ["fluidml.cost=analytic", "fluidml.layout=0", f"fluidml.cache_dir={tmp_path}",
           *extra]
    return fluidml_tvm.compile(model, pass_config=cfg)


def check(case, tmp_path, *extra, rtol=2e-5):
    """Compile ``case`` = (model, feeds), compare with ORT, return the conv/matmul decisions."""
    model, feeds = case
    res = _compile(model, tmp_path, *extra)
    (out,) = res.load().run(feeds).values()
    ref = run_ort(model, feeds)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))
    decs = [d for d in res.decisions["schedule"]
            if any(k in d.subject for k in ("conv", "matmul", "dense"))]
    assert decs, "no conv/matmul kernel in the model"
    for d in decs:
        assert d.choice in FAMILY and d.choice not in GENERIC, f"{d.subject}: {d}"
    return decs


CONVS = [
    # channels 3, 5, 24, 40, 72, 120, 1000; columns 7, 13, 80; 1x1 / 3x3; stride 1 / 2
    dict(C=3, O=24, H=13, W=13, stride=2),  # ShuffleNet's stem: 3 -> 24, stride 2
    dict(C=5, O=5, H=7, W=7),
    dict(C=8, O=24, H=4, W=80),  # the OCR head: 24 channels, 80 columns
    dict(C=24, O=40, H=14, W=14, k=1, pad=0),  # MobileNetV3: 1x1, 40 channels, 14 columns
    dict(C=40, O=72, H=7, W=7, k=1, pad=0),
    dict(C=16, O=120, H=13, W=13, k=1, pad=0),
    dict(C=32, O=1000, H=3, W=13, k=1, pad=0),  # SqueezeNet's classifier conv
    dict(C=8, O=7, H=9, W=9, stride=2),
    dict(C=8, O=1, H=9, W=9),  # one output channel (a probability map)
    dict(C=8, O=24, H=11, W=11, dilation=2, pad=2),  # dilation 2
    dict(C=6, O=10, H=8, W=9, k=5, pad=2, stride=2),
]


@pytest.mark.parametrize("kw", CONVS, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_conv2d_any_shape(tmp_path, kw):
    (d,) = check(om.conv(**kw), tmp_path)
    assert d.choice == "conv2d"
    if kw["O"] % 16 and kw["O"] % 8 or kw["O"] == 1:
        assert "padded to" in d.reason or "lane vectors" in d.reason, d.reason


GROUPED = [
    dict(C=16, O=16, group=2, H=7, W=7),  # groups 2
    dict(C=16, O=32, group=4, H=6, W=6, stride=2),  # groups 4, stride 2
    dict(C=48, O=48, group=6, H=14, W=14, stride=2),  # RegNetY: 8 channels a group
    dict(C=12, O=24, group=4, H=9, W=9, k=1, pad=0),  # 1x1 grouped (ShuffleNetV1)
    dict(C=20, O=20, group=5, H=5, W=13, dilation=2, pad=2),  # dilated, 4 a group
    # a group's 100 channels padded over several panels (ShuffleNet: 136 -> 3 x 48): a tile's
    # epilogue must not reach into the next group's channels
    dict(C=200, O=200, group=2, H=5, W=5, k=1, pad=0),
    dict(C=100, O=200, group=2, H=5, W=6),
]


@pytest.mark.parametrize("kw", GROUPED, ids=lambda kw: f"g{kw['group']}-C{kw['C']}-O{kw['O']}")
def test_grouped_conv(tmp_path, kw):
    (d,) = check(om.conv(**kw), tmp_path)
    assert d.choice == "conv2d" and f"grouped ({kw['group']} groups)" in d.reason


DEPTHWISE = [
    dict(C=16, O=16, group=16, H=14, W=14),  # groups = C
    dict(C=24, O=24, group=24, H=75, W=75),  # a row no vector divides: padded
    dict(C=8, O=8, group=8, H=31, W=150, stride=2),
    dict(C=8, O=16, group=8, H=9, W=9),  # channel multiplier 2: a grouped conv
]


@pytest.mark.parametrize("kw", DEPTHWISE, ids=lambda kw: f"C{kw['C']}-W{kw['W']}-O{kw['O']}")
def test_depthwise_any_width(tmp_path, kw):
    (d,) = check(om.conv(**kw), tmp_path)
    assert d.choice in ("depthwise", "conv2d")


@pytest.mark.parametrize("C,R,H", [(24, 8, 7), (96, 24, 14), (120, 32, 5), (16, 1, 3)])
def test_squeeze_excitation(tmp_path, C, R, H):
    """The 1x1 convolutions on a 1x1 map, the gate multiplied into the feature map."""
    decs = check(om.se_block(C=C, R=R, H=H, W=H), tmp_path)
    assert sorted(d.choice for d in decs) == ["conv2d", "conv2d"]


CONV_T = [
    dict(k=2, stride=2),  # FPN / DBNet upsampling
    dict(k=3, stride=2, pad=1, out_pad=1),
    dict(k=4, stride=2, pad=1),
    dict(C=24, O=24, H=4, W=10, k=2, stride=2),  # the OCR head's 24 channels
    dict(C=16, O=1, H=6, W=7, k=2, stride=2, act=None),  # its single-channel map
    dict(k=3, stride=1, pad=1),
    dict(k=3, stride=3, H=4, W=3),
    dict(C=8, O=8, group=2, k=4, stride=2, pad=1),
    dict(C=6, O=6, group=6, k=2, stride=2, bias=False),  # depthwise upsampling
]


@pytest.mark.parametrize("kw", CONV_T, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_conv_transpose(tmp_path, kw):
    (d,) = check(om.conv_transpose(**kw), tmp_path)
    assert d.choice == "conv2d_transpose", d.reason
    assert f"{kw.get('stride', 2) ** 2} output phases" in d.reason


MATMULS = [(1, 1000, 64), (7, 13, 5), (100, 1001, 7), (1000, 7, 100), (1001, 100, 1),
           (1, 1, 1000), (7, 1, 100), (13, 96, 32)]


@pytest.mark.parametrize("M,N,K", MATMULS, ids=lambda v: str(v))
def test_matmul_any_shape(tmp_path, M, N, K):
    (d,) = check(om.matmul(M=M, N=N, K=K), tmp_path)
    assert d.choice == "matmul"
    if N % 16:
        assert f"columns {N} padded to" in d.reason


@pytest.mark.parametrize("lead,M", [((1, 7), 7), ((1, 14), 14), ((1, 5), 13), ((3,), 11),
                                    ((1, 3), 3)])
def test_matmul_over_several_row_axes(tmp_path, lead, M):
    """ConvNeXt's channels-last MLP: [1, H, W, C] @ [C, N]; with fewer rows than columns (3x11
    and 3x3 here, ConvNeXt's 7x7 stage) B is the bigger operand and the column panels are
    looped outside the outer row axes (matmul.shared_b_rows); the result is ORT's either way."""
    import tvm

    from fluidml_tvm.schedules.rules.matmul import shared_b_rows
    from fluidml_tvm.schedules.rules.matmul_match import analyze

    model, feeds = om.matmul(M=M, N=40, K=24, lead=lead)
    matches = [analyze(f)[0] for _, f in fused(model).functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    (match,) = [m for m in matches if m is not None]
    rows = math.prod(lead) * M
    assert shared_b_rows(match) == (rows < 40 and math.prod(lead) > 1)
    (d,) = check((model, feeds), tmp_path)
    assert d.choice == "matmul"


@pytest.mark.parametrize("B,M,N,K", [(2, 13, 13, 8), (3, 197 // 8, 197 // 8, 64 // 8),
                                     (1, 7, 100, 16)])
def test_attention_scores(tmp_path, B, M, N, K):
    """Q @ K^T of two activations with odd token counts (ViT's 197, Whisper's 1500)."""
    (d,) = check(om.attention_scores(B=B, M=M, N=N, K=K), tmp_path)
    assert d.choice == "matmul"


@pytest.mark.parametrize("case", [
    lambda: om.conv(C=16, O=24, H=6, W=13),
    lambda: om.conv_transpose(C=16, O=24, H=5, W=8, k=2, stride=2),
    lambda: om.matmul(M=13, N=200, K=48),
    lambda: om.conv(C=32, O=32, group=4, H=8, W=13),
])
def test_measured_choice_matches_ort(tmp_path, case):
    """With the candidates timed (fluidml.cost=measured), the fastest is taken, and it computes
    the same as ORT too (every candidate is a valid kernel)."""
    (d,) = check(case(), tmp_path, "fluidml.cost=measured", "fluidml.tune_trials=3")
    assert d.choice in FAMILY


def _host_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.parametrize("mcpu", ["haswell", "x86-64"])  # 8 lanes / 16 registers; 4 lanes
@pytest.mark.parametrize("case", [
    lambda: om.conv(C=8, O=24, H=9, W=13),
    lambda: om.conv(C=48, O=48, group=6, H=9, W=9),
    lambda: om.conv_transpose(C=16, O=1, H=6, W=20, k=2, stride=2, act=None),
    lambda: om.matmul(M=7, N=1000, K=64),
])
def test_other_vector_widths(tmp_path, mcpu, case):
    """The rules work for any lane count: AVX2 (8 lanes) and SSE (4 lanes) targets."""
    model, feeds = case()
    res = fluidml_tvm.compile(model, target={"kind": "llvm", "mcpu": mcpu}, pass_config=[
        "fluidml.cost=analytic", "fluidml.layout=0", f"fluidml.cache_dir={tmp_path}"])
    decs = [d for d in res.decisions["schedule"] if "conv" in d.subject or "matmul" in d.subject]
    assert decs and all(d.choice in FAMILY for d in decs)
    if mcpu == "haswell" and not _host_has("avx2"):
        return  # compiled and scheduled by the family's rule; this host cannot run AVX2 code
    (out,) = res.load().run(feeds).values()
    ref = run_ort(model, feeds)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(ref).max()))
