"""The roofline view: how close each kernel comes to what this host can do.

A kernel's work (``flops``, ``bytes``: :func:`fluidml_tvm.schedules.peaks.kernel_work`) and the
host's measured peaks (``gflops``, ``gbps``: :func:`fluidml_tvm.schedules.peaks.host_peak`) give
the least time the kernel can take, ``max(flops / peak_flops, bytes / peak_bandwidth)``; its
:func:`fraction` is that time over the time it took. Convolution and matmul kernels below
:data:`WARN_FRACTION` are named (``fluidml-tvm compile --report``, ``fluidml-tvm run --profile``):
that is how a fall-off shows up before a user finds it. Plain data and arithmetic, used on the
compile side and by the runtime alike.
"""

from __future__ import annotations

WARN_FRACTION = 0.30
# Rules that schedule convolutions and matmuls: the compute-bound families the roofline watches.
COMPUTE_RULES = ("matmul", "conv2d", "conv2d_nchwc", "conv_pool", "depthwise")
COMPUTE_WORDS = ("conv", "matmul", "dense", "gemm")


def is_compute_kernel(name: str, rule: str = "") -> bool:
    """A convolution or matmul kernel, by the rule that scheduled it or by its name (a kernel
    that fell back to a generic rule still says ``conv2d`` or ``matmul`` in its name)."""
    return rule in COMPUTE_RULES or any(w in name for w in COMPUTE_WORDS)


def fraction(work: dict, seconds: float, peak: dict | None) -> float | None:
    """The share of the roofline a kernel that took ``seconds`` reaches (None: unknown)."""
    if not seconds or not peak or not peak.get("gflops") or not peak.get("gbps"):
        return None
    bound = max(work.get("flops", 0.0) / (peak["gflops"] * 1e9),
                work.get("bytes", 0) / (peak["gbps"] * 1e9))
    return bound / seconds if bound > 0 else None


def rates(work: dict, seconds: float) -> tuple[float, float]:
    """Achieved GFLOP/s and GB/s of a kernel that took ``seconds``."""
    if not seconds:
        return 0.0, 0.0
    return work.get("flops", 0.0) / seconds / 1e9, work.get("bytes", 0) / seconds / 1e9


def lookup(kernels: dict, name: str) -> dict | None:
    """The compile's record of kernel ``name`` (a kernel that reads packed weights is called
    ``NAME_packed`` at run time)."""
    if name in kernels:
        return kernels[name]
    return kernels.get(name[: -len("_packed")]) if name.endswith("_packed") else None


def warning(name: str, rec: dict, seconds: float, peak: dict) -> str | None:
    """The warning line for a conv/matmul kernel below :data:`WARN_FRACTION`, else None."""
    if not is_compute_kernel(name, rec.get("rule", "")):
        return None
    frac = fraction(rec, seconds, peak)
    if frac is None or frac >= WARN_FRACTION:
        return None
    gflops, _ = rates(rec, seconds)
    why = f"rule {rec.get('rule', '?')}"
    if rec.get("rule") in ("reduction", "injective", "none"):
        why += " (a generic fallback)"
    return (f"warning: {name} reaches {frac:.0%} of this host's roofline ({gflops:.1f} of "
            f"{peak['gflops']:.1f} GFLOP/s peak; {why})")
