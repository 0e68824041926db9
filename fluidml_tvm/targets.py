"""Target presets: short names for the boards our users deploy to, plus a JSON escape hatch.

TVM 0.27 rejects ``"llvm -mcpu=..."`` strings; targets are dicts (or registered tags). A preset
carries the TVM target and how to link a library for it (the cross compiler of an aarch64 board).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import FluidMLError, option


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    target: object  # dict or tag string; callable for presets detected at use time
    cross_compiler: str | None = None
    aliases: tuple = field(default_factory=tuple)

    def tvm_target(self):
        import tvm

        spec = self.target() if callable(self.target) else self.target
        return tvm.target.Target(spec)


def _host_x86():
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}


_RASP4B = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
    "num-cores": 4,
}
_ORIN_HOST = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a78",
    "mattr": ["+neon"],
    "num-cores": 12,
}

# What dlight's GPU rules read from a CUDA target (the tags carry these; bare dicts do not).
_CUDA_LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
                "thread_warp_size": 32, "max_num_threads": 1024, "registers_per_block": 65536}

PRESETS = {
    p.name: p
    for p in [
        Preset("x86", "this machine's x86-64 CPU (mcpu detected by LLVM, all cores)", _host_x86,
               aliases=("llvm", "cpu", "host")),
        Preset("rasp4b", "Raspberry Pi 4 Model B: aarch64 Cortex-A72, NEON, 4 cores", _RASP4B,
               cross_compiler="aarch64-linux-gnu-gcc", aliases=("raspberry-pi/4b-aarch64",)),
        Preset("jetson-orin", "NVIDIA Jetson AGX Orin: CUDA sm_87 + aarch64 Cortex-A78 host",
               {"kind": "cuda", "arch": "sm_87", "host": _ORIN_HOST},
               cross_compiler="aarch64-linux-gnu-gcc"),
        Preset("cuda", "NVIDIA GPU, sm_80 (A100) and newer, x86-64 host",
               {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}, **_CUDA_LIMITS}),
        Preset("cuda-sm90", "NVIDIA Hopper GPU (H100/H200), x86-64 host",
               {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}, **_CUDA_LIMITS}),
    ]
}


def resolve(spec) -> tuple[object, str | None]:
    """Turn a ``--target`` value into ``(tvm.target.Target, default cross compiler or None)``.

    Accepts a preset name (``fluidml-tvm targets``), a JSON object (``'{"kind": "llvm", ...}'``),
    a TVM tag (``raspberry-pi/4b-aarch64``) or an existing ``tvm.target.Target``.
    """
    import tvm

    if isinstance(spec, tvm.target.Target):
        return spec, _cross_for(spec)
    if isinstance(spec, dict):
        return _make(spec, repr(spec))
    text = str(spec).strip()
    for p in PRESETS.values():
        if text == p.name or text in p.aliases:
            return p.tvm_target(), p.cross_compiler
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise FluidMLError(f"{option('target')}: invalid JSON ({err.msg} at char "
                               f"{err.pos})") from None
        return _make(obj, text)
    if "/" in text:  # a TVM tag
        return _make(text, text)
    names = ", ".join(PRESETS)
    raise FluidMLError(
        f"unknown target {text!r}; use a preset ({names}), a TVM tag or a JSON object such as "
        "'{\"kind\": \"llvm\", \"mcpu\": \"cortex-a72\", \"mtriple\": \"aarch64-linux-gnu\"}'"
    )


def _make(spec, shown):
    import tvm

    try:
        target = tvm.target.Target(spec)
    except Exception as err:  # TVM raises ValueError/TVMError with multi-line text
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FluidMLError(f"invalid target {shown}: {first}") from None
    return target, _cross_for(target)


def _cross_for(target) -> str | None:
    host = target.host if target.host is not None else target
    triple = str(host.attrs.get("mtriple", ""))
    if triple.startswith("aarch64") and os.uname().machine != "aarch64":
        return "aarch64-linux-gnu-gcc"
    return None


def is_cuda(target) -> bool:
    return target.kind.name == "cuda"


def describe_all() -> str:
    lines = []
    for p in PRESETS.values():
        extra = f" (cross compiler: {p.cross_compiler})" if p.cross_compiler else ""
        lines.append(f"{p.name:<12} {p.description}{extra}")
    lines.append("or a TVM tag (e.g. raspberry-pi/4b-aarch64) or a JSON target object")
    return "\n".join(lines)
