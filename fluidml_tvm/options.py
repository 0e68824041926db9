"""One frozen options object for every FluidML stage.

The same options are reachable as keyword arguments (``Options(layout=False)``), as tvmc-style
``--pass-config`` flags (``fluidml.layout=0``) and as TVM ``PassContext`` config keys
(``{"fluidml.layout": False}``, registered by :mod:`fluidml_tvm.config_keys` where a C++ compiler is
available). ``fluidml`` (alone) switches the whole FluidML pipeline on or off; the others are the
per-stage kill switches, so a wrong result or a slowdown can be bisected to one stage.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from .errors import FluidMLError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return default


def default_cache_dir() -> str:
    return os.environ.get(
        "FLUIDML_TVM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fluidml-tvm")
    )


@dataclass(frozen=True)
class Options:
    """Configuration of the ``fluidml`` pipeline.

    Parameters
    ----------
    enable
        ``fluidml=1`` runs the FluidML pipeline, ``fluidml=0`` stock TVM's
        ``relax.get_default_pipeline(target)`` (for apples-to-apples comparisons).
    layout, memory, schedule
        Kill switches of the three FluidML stages (all on by default).
    split_projection
        Replace a constant-weight projection read only through slices of its last axis (a fused
        QKV) by one projection per slice, so the fused output is never materialized
        (:mod:`fluidml_tvm.passes.split_projection`; runs before the layout stage).
    residual_order
        Fuse a residual sum of two projections into the kernel that lowers the memory planner's
        bound, measured by lowering both ways (:mod:`fluidml_tvm.passes.residual_order`).
    fuse_conv_pool
        Fuse conv2d(+bias/ReLU) with the max-pool consuming it into one kernel that computes the
        convolution a few rows at a time, so its output is never materialized
        (:mod:`fluidml_tvm.passes.fuse_conv_pool`; needs the schedule stage).
    fuse_conv_chain
        With ``fuse_conv_pool``: a cheap convolution (<= 10% of the next one's FLOPs, e.g. VGG's
        first, 3 input channels) feeding the fused one is computed inside its row loop too.
    schedule_off
        Comma-separated schedule rules to switch off (``depthwise``, ``conv1x1``): their kernels
        fall to the next rule (see :mod:`fluidml_tvm.schedules.fluidml_schedule`). ``conv1x1``
        is off by default: MobileNetV2 on/off 0.76/0.99x and 1.08/1.02x ORT, ResNet-50
        0.75/0.78x in loaded interleaved runs, no gain beyond noise; ``""`` turns it on.
    layout_conv
        NHWC candidates for conv2d activations in the layout stage (applied only where measured
        faster; :mod:`fluidml_tvm.passes.layout_conv`).
    layout_blocked
        With ``layout_conv``: also the blocked ``NCHW[b]c`` layout (``b`` = the target's vector
        lanes) for conv activations (:mod:`fluidml_tvm.passes.layout_conv`, scheduled by
        :mod:`fluidml_tvm.schedules.conv2d_nchwc`). Off by default: on VGG-11 (znver4) the plan
        put the first conv in NCHW16c, which conv+pool fusion does not take, so planned
        activations grew from 4.82 to 16.06 MB, for no latency gain (layouts on/off 0.946 with
        it, 0.947 without; each conv layout within 2% of NCHW but the first,
        benchmarks/results/2026-11-26-layout.md).
    layout_verify
        Keep a layout plan only if it measured faster end to end: the first compile of a new
        plan (host targets, ``cost=measured``) also compiles the model with ``fluidml.layout=0``,
        times both in interleaved rounds and returns the faster; the on/off ratio is cached per
        plan id, so later compiles of the same plan apply it or not without re-timing
        (:mod:`fluidml_tvm.passes.layout_gain`). Default from ``FLUIDML_TVM_LAYOUT_VERIFY``
        (unset: on).
    verify
        Run the independent memory-plan verifier at compile time.
    cost
        Where layout/schedule costs come from: ``measured`` (run kernels on the target, cached),
        ``learned`` (XGBoost model trained on the cache) or ``analytic``.
    tune_trials
        Measurement budget per kernel when candidate schedules are measured.
    cache_dir
        The on-disk measurement database (sqlite); survives restarts.
    num_threads
        Threads the TVM runtime uses when fluidml-tvm runs or measures a model (0: all cores).
    weights
        ``external``: ``fluidml_tvm.compile`` moves the (already folded) weights out of the library
        into ``NAME.weights``, mapped at load so a process holds them once; ``embedded``: inside
        the library, as stock TVM does; ``auto``: external for libraries that run on this machine.
    """

    enable: bool = True
    layout: bool = True
    memory: bool = True
    schedule: bool = True
    split_projection: bool = True
    residual_order: bool = True
    fuse_conv_pool: bool = True
    fuse_conv_chain: bool = True
    schedule_off: str = "conv1x1"
    layout_conv: bool = True
    layout_blocked: bool = False
    layout_verify: bool = field(
        default_factory=lambda: _env_flag("FLUIDML_TVM_LAYOUT_VERIFY", True))
    verify: bool = False
    cost: str = "measured"
    tune_trials: int = 8
    cache_dir: str = field(default_factory=default_cache_dir)
    num_threads: int = 0
    weights: str = "auto"

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        """Map of pass-config key (``fluidml``, ``fluidml.layout``, ...) to dataclass field."""
        out = {}
        for f in fields(cls):
            out["fluidml" if f.name == "enable" else "fluidml." + f.name] = f
        out["fluidml.enable"] = out["fluidml"]  # PassContext-style spelling of the same switch
        return out

    @classmethod
    def from_context(cls, base: Options | None = None) -> Options:
        """``base`` updated with the ``fluidml.*`` keys of the current TVM ``PassContext``."""
        import tvm

        config = tvm.transform.PassContext.current().config
        found = {k: config[k] for k in cls.keys() if k in config}
        return cls.from_pass_config(found, base=base) if found else (base or cls())

    @classmethod
    def from_pass_config(cls, items, base: Options | None = None) -> Options:
        """Build options from ``key=value`` strings or a ``{key: value}`` mapping.

        Unknown ``fluidml.*`` keys and malformed values raise :class:`FluidMLError` naming the key.
        Keys outside the ``fluidml`` namespace are returned untouched by :func:`split_pass_config`.
        """
        if isinstance(items, dict):
            pairs = list(items.items())
        else:
            pairs = []
            for item in items:
                if "=" not in item:
                    raise FluidMLError(
                        f"--pass-config expects KEY=VALUE, got {item!r} (e.g. fluidml.layout=0)"
                    )
                k, v = item.split("=", 1)
                pairs.append((k.strip(), v.strip()))
        known = cls.keys()
        changes = {}
        for k, v in pairs:
            if k not in known:
                raise FluidMLError(
                    f"unknown pass-config key {k!r}; known FluidML keys: {', '.join(sorted(known))}"
                )
            f = known[k]
            changes[f.name] = _coerce(k, f, v)
        opts = dataclasses.replace(base or cls(), **changes)
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.cost not in ("measured", "learned", "analytic"):
            raise FluidMLError(
                f"fluidml.cost must be measured, learned or analytic, got {self.cost!r}"
            )
        if self.tune_trials < 1:
            raise FluidMLError(f"fluidml.tune_trials must be >= 1, got {self.tune_trials}")
        if self.weights not in ("auto", "external", "embedded"):
            raise FluidMLError(
                f"fluidml.weights must be auto, external or embedded, got {self.weights!r}"
            )
        if self.num_threads < 0:
            raise FluidMLError(f"fluidml.num_threads must be >= 0, got {self.num_threads}")

    def to_dict(self) -> dict:
        return {k: getattr(self, f.name) for k, f in self.keys().items() if k != "fluidml.enable"}

    def describe(self) -> str:
        if not self.enable:
            return "stock TVM pipeline (fluidml=0)"
        on = [s for s in ("layout", "memory", "schedule") if getattr(self, s)]
        off = [s for s in ("layout", "memory", "schedule") if not getattr(self, s)]
        text = "fluidml pipeline, stages on: " + (", ".join(on) or "none")
        return text + (f"; off: {', '.join(off)}" if off else "")


def _coerce(key: str, f: dataclasses.Field, value):
    typ = f.type if isinstance(f.type, type) else {"bool": bool, "int": int, "str": str}[f.type]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return bool(value)
        s = str(value).lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise FluidMLError(f"{key} expects 0 or 1, got {value!r}")
    if typ is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise FluidMLError(f"{key} expects an integer, got {value!r}") from None
    return str(value)


def split_pass_config(items) -> tuple[list[str], dict[str, str]]:
    """Split ``--pass-config`` items into FluidML ones and other TVM PassContext ones."""
    ours, theirs = [], {}
    for item in items or []:
        key = item.split("=", 1)[0].strip()
        if key == "fluidml" or key.startswith("fluidml."):
            ours.append(item)
        else:
            if "=" not in item:
                raise FluidMLError(f"--pass-config expects KEY=VALUE, got {item!r}")
            theirs[key] = item.split("=", 1)[1].strip()
    return ours, theirs
