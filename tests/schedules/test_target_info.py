"""target_info.py: vector width and register budget come from the target, not the host."""

from __future__ import annotations

from fluidml_tvm.schedules import cpu_info
from fluidml_tvm.schedules.rules import matmul as mm

from .models import matmul_func


def test_vector_width_comes_from_the_target_not_the_host():
    avx512 = cpu_info({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = cpu_info({"kind": "llvm", "mcpu": "haswell"})
    neon = cpu_info({"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu",
                     "mattr": ["+neon"]})
    assert (avx512.isa, avx512.lanes(), avx512.vector_registers) == ("avx512", 16, 32)
    assert (avx2.isa, avx2.lanes(), avx2.vector_registers) == ("avx2", 8, 16)
    assert (neon.isa, neon.lanes(), neon.vector_registers) == ("neon", 4, 32)
    match, _ = mm.analyze(matmul_func(128, 96, 64))
    for cpu in (avx512, avx2, neon):
        for cfg in mm.candidates(match, cpu, 8):
            assert cfg.mr * cfg.nv + 2 <= cpu.vector_registers
            assert 96 % (cfg.nv * cpu.lanes()) == 0
    assert avx512.key() != avx2.key()  # the measurement cache keeps them apart
