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
    from fluidml_tvm.schedules.rules.conv2d import pack_index_map

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
