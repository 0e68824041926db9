"""Per-target facts the schedules need, read from the target's attributes (never from the host).

``llvm_get_vector_width`` reports 512 bits for every x86 target (even ``-mcpu=generic``, which
compiles to SSE2), so the vector width is derived from the features LLVM enables for the target's
``mcpu``/``mattr`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target import codegen


@dataclass(frozen=True)
class CPUInfo:
    """Vector width and register budget of one CPU target."""

    isa: str  # "avx512", "avx2", "sse", "neon", "generic"
    vector_bits: int
    vector_registers: int
    num_cores: int  # from the target's num-cores; 0 when unknown

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(1, self.vector_bits // dtype_bits)

    def key(self) -> str:
        return f"{self.isa}-{self.vector_bits}x{self.vector_registers}"


def _has(features: list[str], target) -> bool:
    try:
        return bool(codegen.llvm_cpu_has_features(features, target))
    except Exception:  # noqa: BLE001 - unknown feature names for this arch
        return False


def cpu_info(target) -> CPUInfo:
    """Vector facts of ``target`` (an llvm target; a non-llvm host is looked through)."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if target.kind.name != "llvm" and target.host is not None:
        target = target.host
    cores = int(target.attrs.get("num-cores", 0) or 0)
    triple = str(target.attrs.get("mtriple", "") or "")
    keys = [str(k) for k in target.keys]
    is_arm = "arm_cpu" in keys or triple.startswith(("aarch64", "arm"))
    if is_arm:
        # NEON / ASIMD: 128-bit vectors; AArch64 has 32 of them, 32-bit ARM 16.
        regs = 32 if triple.startswith("aarch64") or "feature.is_aarch64" in target.attrs else 16
        return CPUInfo("neon", 128, regs, cores)
    if _has(["avx512f"], target):
        return CPUInfo("avx512", 512, 32, cores)
    if _has(["avx2"], target) or _has(["avx"], target):
        return CPUInfo("avx2", 256, 16, cores)
    if triple.startswith(("x86", "i686")) or not triple:
        return CPUInfo("sse", 128, 16, cores)
    return CPUInfo("generic", 128, 16, cores)


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """An llvm target for this machine with its real CPU name (``-mcpu=native`` is rejected)."""
    spec = {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())}
    if num_cores:
        spec["num-cores"] = int(num_cores)
    return tvm.target.Target(spec)
