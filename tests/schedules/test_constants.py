"""constants.py, the Relax side: which call_tir arguments are constants at every call site,
pack_array against the packed index maps, and the callers' constants packed at compile time."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from fluidml_tvm.options import Options
from fluidml_tvm.schedules import FluidMLSchedule
from fluidml_tvm.schedules.constants import constant_args, pack_array

from .models import TARGET, fused, gemm_model, run_ort, two_input_matmul


def test_pack_array_matches_index_map():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 32)).astype("f4")  # [K, N]
    p = pack_array(w, ("k", "n"), 16)
    assert p.shape == (2, 6, 16)
    for k in range(6):
        for n in range(32):
            assert p[n // 16, k, n % 16] == w[k, n]
    wt = np.ascontiguousarray(w.T)  # [N, K]
    np.testing.assert_array_equal(pack_array(wt, ("n", "k"), 16), p)


def test_pack_array_of_a_conv_weight():
    """A conv weight (roles f/r per dim) -> [F/nr, other dims.., nr]."""
    from fluidml_tvm.schedules.rules.conv2d_match import pack_index_map

    w = np.random.default_rng(1).standard_normal((32, 3, 3, 3)).astype("f4")  # OIHW
    p = pack_array(w, ("conv", "f", "r", "r", "r"), 16)
    assert p.shape == (2, 3, 3, 3, 16)
    fmap = pack_index_map(["f", "r", "r", "r"], 16)
    for idx in [(0, 0, 0, 0), (17, 2, 1, 0), (31, 1, 2, 2)]:
        assert p[tuple(int(i) for i in fmap(*idx))] == w[idx]


def test_constant_args_per_call_site():
    """A weight is a constant; an activation, or a parameter of the Relax function, is not."""
    consts = constant_args(fused(gemm_model()))
    (name,) = [k for k in consts if "matmul" in k]
    assert consts[name][1] is True and consts[name][0] is False
    consts = constant_args(fused(two_input_matmul()))
    assert not any(v for slot in consts.values() for v in slot.values())


def test_packed_kernel_replaces_the_old_one_and_its_constant_is_packed(tmp_path):
    """A matmul whose B is a constant gets a new signature (``<kernel>_packed``), the caller's
    constant is passed packed, the old kernel is gone, and the numbers are ORT's."""
    model = gemm_model(M=32, N=48, K=40, trans_b=0)
    mod = fused(model)
    p = FluidMLSchedule(TARGET, Options(cost="analytic", cache_dir=str(tmp_path)))
    with TARGET:
        out = p(mod)
    names = [gv.name_hint for gv, _ in out.functions_items()]
    (packed,) = [n for n in names if n.endswith("_packed")]
    assert packed[: -len("_packed")] not in names
    prim = out[packed]
    assert len(prim.params[1].ty.shape) == 3  # B as [N/nr, K, nr]
    x = np.random.default_rng(0).standard_normal((32, 40)).astype("f4")
    ex = tvm.compile(out, TARGET, relax_pipeline=relax.get_pipeline("default"))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, run_ort(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_pack_array_pads_to_whole_panels():
    """F / N that nr does not divide: zeros appended to whole panels (the padded channels /
    columns of rules/pad.py); dividing shapes pack as before."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((24, 5, 3, 3)).astype("f4")
    p = pack_array(w, ("conv", "f", "r", "r", "r"), 16)
    assert p.shape == (2, 5, 3, 3, 16)
    np.testing.assert_array_equal(p[1, ..., 8:], 0)
    np.testing.assert_array_equal(p[1, 2, 1, 0, :8], w[16:, 2, 1, 0])
    b = rng.standard_normal((7, 1000)).astype("f4")  # [K, N]
    pb = pack_array(b, ("k", "n"), 48)
    assert pb.shape == (21, 7, 48)
    np.testing.assert_array_equal(pb[20, :, 40:], 0)
    np.testing.assert_array_equal(pb[20, :, :40], b[:, 960:])


def test_pack_array_of_a_grouped_weight():
    """Groups: [F, Cg, kh, kw] -> [G, F/G, ..] (rules/grouped.py), then the conv packing."""
    w = np.random.default_rng(3).standard_normal((12, 4, 3, 3)).astype("f4")  # 3 groups of 4
    p = pack_array(w, ("groups", 3, 0, "conv", "r", "f", "r", "r", "r"), 8)
    assert p.shape == (1, 3, 4, 3, 3, 8)  # [Fg/nr, G, Cg, kh, kw, nr]
    for g in range(3):
        for f in range(4):
            np.testing.assert_array_equal(p[0, g, :, :, :, f], w[g * 4 + f])
    np.testing.assert_array_equal(p[..., 4:], 0)


def test_phase_weight_is_the_transposed_conv():
    """Wph against the definition: out[s*q + p] = sum_t x[q + E(p) - (T-1) + t] Wph[p, .., t]
    reproduces a direct 1-D transposed convolution (k=3, s=2, pad=1; k=4, s=2, pad=1)."""
    from fluidml_tvm.schedules.constants import phase_weight

    rng = np.random.default_rng(4)
    for k, s, pad in [(3, 2, 1), (4, 2, 1), (2, 2, 0), (3, 3, 0)]:
        x = rng.standard_normal(6)
        b = rng.standard_normal((1, 1, k, 1))  # [C, F, kh, kw=1]
        n_out = (6 - 1) * s - 2 * pad + k
        ref = np.zeros(n_out)
        for i in range(6):
            for ky in range(k):
                o = i * s + ky - pad
                if 0 <= o < n_out:
                    ref[o] += x[i] * b[0, 0, ky, 0]
        wph = phase_weight(b, (k, 1), (s, 1), (pad, 0))  # [s, 1, 1, 1, 1, T, 1]
        t_ = wph.shape[5]
        out = np.zeros(n_out)
        for o in range(n_out):
            q, p = divmod(o, s)
            for t in range(t_):
                i = q + (p + pad) // s - (t_ - 1) + t
                if 0 <= i < 6:
                    out[o] += x[i] * wph[p, 0, 0, 0, 0, t, 0]
        np.testing.assert_allclose(out, ref, atol=1e-12)
