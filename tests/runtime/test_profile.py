"""Per-kernel timings (``fluidml-tvm run --profile``): measured in this process, and the table."""

import numpy as np

from fluidml_tvm.runtime import load
from fluidml_tvm.runtime.profile import format_kernel_table, local_kernel_times

ROWS = [
    {"name": "fused_matmul_add", "calls": 2, "total_ms": 6.0, "mean_us": 3000.0},
    {"name": "vm.builtin.alloc_storage", "calls": 4, "total_ms": 1.0, "mean_us": 250.0},
    {"name": "relu", "calls": 2, "total_ms": 2.0, "mean_us": 1000.0},
    {"name": "add", "calls": 1, "total_ms": 1.0, "mean_us": 1000.0},
]


def test_kernel_table():
    lines = format_kernel_table(ROWS, top=2).split("\n")
    assert lines == [
        f"{'kernel':<48} {'calls':>6} {'total (ms)':>11} {'mean (us)':>10} {'share':>6}",
        f"{'fused_matmul_add':<48} {2:>6} {6.0:>11.4f} {3000.0:>10.2f} {60.0:>5.1f}%",
        f"{'relu':<48} {2:>6} {2.0:>11.4f} {1000.0:>10.2f} {20.0:>5.1f}%",
        f"{'(1 more kernels)':<48} {1:>6} {1.0:>11.4f} {'':>10} {10.0:>5.1f}%",
        f"{'(VM builtins: 1 kinds)':<48} {4:>6} {1.0:>11.4f} {'':>10} {10.0:>5.1f}%",
    ]
    assert len(format_kernel_table(ROWS).split("\n")) == 5  # all 3 kernels + the builtins
    assert format_kernel_table([]).split("\n")[0].startswith("kernel")
    long = [{"name": "k" * 60, "calls": 1, "total_ms": 1.0, "mean_us": 1.0}]
    assert format_kernel_table(long).split("\n")[1].startswith("k" * 48 + " ")


def test_local_kernel_times(mlp_lib):
    lib, _ = mlp_lib
    model = load(lib)
    feeds = {"x": np.ones((4, 32), "float32")}
    before = model.run(feeds)["y"]
    rows = local_kernel_times(model, feeds, number=3)
    kernels = [r for r in rows if not r["name"].startswith("vm.builtin.")]
    assert kernels and all(r["calls"] >= 3 and r["total_ms"] > 0 for r in kernels)
    assert rows == sorted(rows, key=lambda r: -r["total_ms"])
    for r in rows:
        assert abs(r["mean_us"] - r["total_ms"] * 1e3 / r["calls"]) < 1e-6 * r["mean_us"] + 1e-9
    np.testing.assert_array_equal(model.run(feeds)["y"], before)  # the instrument is gone
