"""One frozen options object for every FluidML stage: every switch, its default and its help.

The same options are reachable as keyword arguments (``Options(layout=False)``), as tvmc-style
``--pass-config`` flags (``fluidml.layout=0``) and as TVM ``PassContext`` config keys
(``{"fluidml.layout": False}``, registered by :mod:`fluidml_tvm.config_keys` where a C++ compiler is
available). ``fluidml`` (alone) switches the whole FluidML pipeline on or off; the others are the
per-stage kill switches, so a wrong result or a slowdown can be bisected to one stage.

The table of switches (:func:`table`) is the one source of ``describe()``, ``fluidml-tvm compile
--help`` and the README's list of keys (a test checks that the README lists every key).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from .errors import FluidMLError, option
from .tuning import AUTO, AUTO_BASE, AUTO_MAX, AUTO_PER_GB

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
    """``FLUIDML_TVM_CACHE``, else ``$XDG_CACHE_HOME/fluidml-tvm`` (the XDG base directory
    convention, where the cross toolchains and CUDA stubs also go), else
    ``~/.cache/fluidml-tvm``."""
    if os.environ.get("FLUIDML_TVM_CACHE"):
        return os.environ["FLUIDML_TVM_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fluidml-tvm")


def _opt(default=None, help: str = "", factory=None, choices=(), shown=None):  # noqa: A002
    meta = {"help": help, "choices": tuple(choices), "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """Configuration of the ``fluidml`` pipeline; each field's help is in :func:`table`."""

    enable: bool = _opt(True, "run the FluidML pipeline (0: stock TVM's "
                        "relax.get_default_pipeline(target), for apples-to-apples comparisons)")
    layout: bool = _opt(True, "layout stage: whole-graph layout selection (kill switch)")
    memory: bool = _opt(True, "memory stage: FluidML's arena planner in StaticPlanBlockMemory's "
                        "slot (kill switch; 0 keeps the stock planner)")
    schedule: bool = _opt(True, "schedule stage: TensorIR schedules for every fused kernel "
                          "(kill switch)")
    fold_batchnorm: bool = _opt(True, "an inference BatchNorm with constant statistics is folded "
                                "into the weights of the conv2d before it (else a per-channel "
                                "multiply-add that fuses with its neighbours): no kernel of its "
                                "own")
    fold_constants: bool = _opt(True, "reshapes, transposes and elementwise arithmetic on "
                                "constants computed with numpy before legalization (TVM's "
                                "FoldConstant builds an LLVM kernel for each: seconds a CNN)")
    winograd: bool = _opt(True, "3x3 stride-1 convolutions (NCHW, >= 16 channels each side) "
                          "computed with Winograd F(4x4, 3x3): 4x fewer products, as 36 "
                          "matmuls between two transform kernels (needs the schedule stage); "
                          "6 corpus models 0.81x latency; the transformed maps cost memory "
                          "(VGG-11 2.1x faster, planned 4.6 -> 14-21 MiB by layout plan; "
                          "stock 16)")
    split_projection: bool = _opt(True, "a constant-weight projection read only through slices "
                                  "of its last axis (a fused QKV) becomes one projection per slice")
    residual_order: bool = _opt(True, "a residual sum of two projections is fused into the kernel "
                                "that lowers the memory planner's bound (measured by lowering "
                                "both ways)")
    fuse_conv_pool: bool = _opt(True, "conv2d(+bias/ReLU) and the max-pool consuming it in one "
                                "kernel, the conv output never materialized (needs the schedule "
                                "stage; a convolution Winograd leaves direct; with winograd=0 "
                                "VGG-11 planned 0.29x of stock)")
    fuse_conv_chain: bool = _opt(True, "with fuse_conv_pool: a cheap convolution (<= 10% of the "
                                 "next one's FLOPs, e.g. VGG's first) feeding the fused one is "
                                 "computed inside its row loop too (VGG-16 0.36x instead of 0.61x)")
    schedule_off: str = _opt("conv1x1", "comma-separated schedule rules switched off (depthwise, "
                             "depthwise_flat, pool, conv1x1, pointwise_cols); their kernels fall "
                             "to the next rule (depthwise_flat: to the row-by-row depthwise "
                             "kernel; pointwise_cols - 1x1 NCHW convs with the vectors along the "
                             "positions - to the channel-vector conv2d tiles). conv1x1 is off by "
                             "default: no gain beyond noise on MobileNetV2/ResNet-50; '' turns "
                             "it on")
    fast_math: bool = _opt(True, "vectorizable exp/erf/tanh/sigmoid, and x / c (c a constant) "
                           "as x * (1/c), in the kernels FluidML schedules, nowhere else (exp: "
                           "relative error <= 2e-7; the others: absolute error <= 3e-7; x / c "
                           "within 1.5 ulp; NaN, +-inf and overflow as IEEE); 0 keeps libm's "
                           "scalar calls and the divisions")
    stack_buffers: bool = _opt(True, "per-iteration buffers (1-64 KB) of the parallel loops in "
                               "the kernels FluidML builds for CPUs kept on the worker's stack, "
                               "not a TVMBackendAllocWorkspace call every iteration (a row's "
                               "buffer of a conv or softmax; MobileNetV3-Small's 1x1 convs 11.6 "
                               "-> 8.6 us); 0: TVM's lowering as it is")
    vector_reductions: bool = _opt(True, "row reductions (softmax, LayerNorm) as one vector of "
                                   "partial results a step (rfactor; reassociated as ONNX "
                                   "Runtime's MLAS does: whisper-tiny's 1500-wide softmax 10x "
                                   "faster); 0: one scalar accumulator, in order")
    layout_conv: bool = _opt(True, "NHWC candidates for conv2d activations (groups 1 and "
                             "depthwise) in the layout stage "
                             "(applied only where measured faster)")
    layout_blocked: bool = _opt(False, "with layout_conv: blocked NCHW[b]c candidates (b = the "
                                "target's vector lanes). Off: on VGG-11 it took the first conv out "
                                "of conv+pool fusion (planned 16.06 vs 4.82 MB) for no latency "
                                "gain")
    layout_neighbours: bool = _opt(False, "within a bounded tune budget: a conv node left "
                                   "unmeasured takes the measured NHWC/NCHW ratio of its nearest "
                                   "measured conv of its kind, and one node of each kind is "
                                   "measured first. Off: 12 conv models A/B geomean 0.993 "
                                   "(0.965-1.020), no gain beyond noise")
    layout_verify: bool = _opt(help="keep a layout plan only if it measured faster end to end: "
                               "the first compile of a new plan also compiles with "
                               "fluidml.layout=0 and times both (cached per plan id). Default "
                               "from FLUIDML_TVM_LAYOUT_VERIFY (unset: on)",
                               factory=lambda: _env_flag("FLUIDML_TVM_LAYOUT_VERIFY", True),
                               shown="1")
    memory_reorder: bool = _opt(True, "memory stage: choose a memory-aware execution order")
    memory_inplace: bool = _opt(True, "memory stage: an elementwise kernel's output may take the "
                                "bytes of an input that dies at that call")
    memory_split: bool = _opt(True, "memory stage: a second small arena for the tensors live when "
                              "the first output is allocated, where it lowers the run-time peak "
                              "within 1.05x of the live-set bound")
    memory_concat: bool = _opt(True, "memory stage: a concat along a contiguous axis has its "
                               "inputs written straight into their slabs of its output, the copy "
                               "dropped (the binding order is then kept)")
    verify: bool = _opt(False, "run the independent memory-plan verifier at compile time")
    cost: str = _opt("measured", "where layout/schedule costs come from: measured (kernels run "
                     "on the target, cached), learned (XGBoost on the cache) or analytic",
                     choices=("measured", "learned", "analytic"))
    tune_trials: int = _opt(8, "candidate schedules measured per kernel")
    tune_budget: int = _opt(AUTO, "seconds a compile may spend measuring (schedules, layout "
                            "variants, a new layout plan's check, the host's peaks), kernels with "
                            "the largest share of the modelled run time per second of measuring "
                            "first; the rest are decided by the analytic model (the decisions say "
                            f"so) and cached. auto ({AUTO}): {AUTO_BASE:g} s plus {AUTO_PER_GB:g} "
                            f"s a GB of weights, at most {AUTO_MAX:g} s; -1: no limit; 0: nothing "
                            "measured (cached choices used)",
                            shown="auto")
    retune: bool = _opt(False, "measure again, within the budget, what the cache holds only "
                        "from a loaded machine (provisional choices); 0: a cached choice is "
                        "used as it is, a warm compile measures nothing")
    kernel_cache: bool = _opt(True, "compiled kernels kept in cache_dir/objects and linked again "
                              "when a later compile produces the same kernel (host LLVM "
                              "targets; the kernels a compile builds, it builds on all cores): "
                              "a warm compile generates no code. 0: one module for all kernels, "
                              "as tvm.compile builds")
    cache_dir: str = _opt(help="the on-disk measurement database (sqlite; default "
                          "FLUIDML_TVM_CACHE, else $XDG_CACHE_HOME/fluidml-tvm, else "
                          "~/.cache/fluidml-tvm)", factory=default_cache_dir,
                          shown="~/.cache/fluidml-tvm")
    num_threads: int = _opt(0, "threads the TVM runtime uses when fluidml-tvm runs or measures a "
                            "model (0: all cores)")
    weights: str = _opt("auto", "external: weights beside the library in NAME.weights, mapped at "
                        "load; embedded: inside it (stock TVM); auto: external for libraries "
                        "that run on this machine", choices=("auto", "external", "embedded"))

    # ---- the table ------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        """Map of pass-config key (``fluidml``, ``fluidml.layout``, ...) to dataclass field."""
        out = {key_of(f.name): f for f in fields(cls)}
        out["fluidml.enable"] = out["fluidml"]  # PassContext-style spelling of the same switch
        return out

    # ---- construction -------------------------------------------------------------------------
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
                        f"{option('pass_config')} expects KEY=VALUE, got {item!r} "
                        "(e.g. fluidml.layout=0)"
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
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise FluidMLError(f"{key_of(f.name)} must be {', '.join(choices[:-1])} or "
                                   f"{choices[-1]}, got {getattr(self, f.name)!r}")
        if self.tune_trials < 1:
            raise FluidMLError(f"fluidml.tune_trials must be >= 1, got {self.tune_trials}")
        if self.tune_budget < AUTO:
            raise FluidMLError(f"fluidml.tune_budget must be >= 0 seconds (or auto, or -1: no "
                               f"limit), got {self.tune_budget}")
        if self.num_threads < 0:
            raise FluidMLError(f"fluidml.num_threads must be >= 0, got {self.num_threads}")

    def to_dict(self) -> dict:
        return {key_of(f.name): getattr(self, f.name) for f in fields(self)}

    def rule_on(self, rule: str) -> bool:
        """Whether schedule rule ``rule`` is not switched off by ``fluidml.schedule_off``."""
        return rule not in {r.strip() for r in (self.schedule_off or "").split(",")}

    def describe(self) -> str:
        """The pipeline in one line: every switch that differs from its default is named."""
        if not self.enable:
            return "stock TVM pipeline (fluidml=0)"
        on = [s for s in STAGES if getattr(self, s)]
        off = [s for s in STAGES if not getattr(self, s)]
        text = "fluidml pipeline, stages on: " + (", ".join(on) or "none")
        text += f"; off: {', '.join(off)}" if off else ""
        default = Options()
        changed = [f"{key_of(f.name)}={_show(getattr(self, f.name))}" for f in fields(self)
                   if f.name not in STAGES + ("enable", "cache_dir")
                   and getattr(self, f.name) != getattr(default, f.name)]
        return text + (f"; {', '.join(changed)}" if changed else "")


STAGES = ("layout", "memory", "schedule")


def key_of(name: str) -> str:
    """The pass-config key of an :class:`Options` field (``enable`` -> ``fluidml``)."""
    return "fluidml" if name == "enable" else "fluidml." + name


def _show(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return repr(value) if value == "" else str(value)


def _type_of(f: dataclasses.Field) -> type:
    return f.type if isinstance(f.type, type) else {"bool": bool, "int": int, "str": str}[f.type]


def table() -> list[tuple[str, str, str]]:
    """``(key, default, help)`` for every switch, in declaration order."""
    rows = []
    for f in fields(Options):
        shown = f.metadata["shown"] or _show(f.default)
        rows.append((key_of(f.name), shown, f.metadata["help"]))
    return rows


def markdown_table(indent: str = "  ") -> str:
    """The README's table of keys (``python -c "from fluidml_tvm.options import markdown_table;
    print(markdown_table())"``)."""
    rows = [f"{indent}| key=default | what it does |", f"{indent}|---|---|"]
    rows += [f"{indent}| `{k}={d}` | {h} |" for k, d, h in table()]
    return "\n".join(rows)


def help_text(width: int = 100) -> str:
    """Every ``fluidml.*`` key with its default and help (``--help``, README)."""
    import textwrap

    out = []
    for key, default, text in table():
        out.append(f"{key}={default}")
        out += textwrap.wrap(text, width - 4, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(out)


def _coerce(key: str, f: dataclasses.Field, value):
    typ = _type_of(f)
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
        if f.name == "tune_budget" and str(value).strip().lower() == "auto":
            return AUTO
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
                raise FluidMLError(f"{option('pass_config')} expects KEY=VALUE, got {item!r}")
            theirs[key] = item.split("=", 1)[1].strip()
    return ours, theirs


def resolve(options=None, pass_config=None) -> tuple[Options, dict]:
    """Options from (in increasing priority) the current PassContext, ``options``, ``pass_config``.

    ``pass_config`` is a list of ``KEY=VALUE`` strings or a dict; keys outside ``fluidml.*`` are
    returned as TVM PassContext config.
    """
    base = options if options is not None else Options.from_context()
    if isinstance(pass_config, dict):
        pass_config = [f"{k}={v}" for k, v in pass_config.items()]
    ours, theirs = split_pass_config(pass_config or [])
    return Options.from_pass_config(ours, base=base), theirs


_BOOL_TYPES = {"bool", "Bool"}
_INT_TYPES = {"int", "Integer", "ir.IntImm"}
_STR_TYPES = {"String", "str", "ffi.String"}


def tvm_pass_config(items: dict) -> dict:
    """TVM ``PassContext`` config from ``--pass-config`` strings: each value converted to the type
    TVM declares for its key (``PassContext.list_configs()``). An unknown key, a value of the
    wrong type or a key that takes a structured config object is a :class:`FluidMLError` naming
    the key (a tvmc-era ``tir.*`` key points to its TVM 0.27 name)."""
    import difflib

    import tvm

    known = {k: str(v.get("type", "")) for k, v in tvm.transform.PassContext.list_configs().items()}
    out = {}
    for key, value in items.items():
        if key not in known:
            hints = [n for n in (f"tirx.{key[4:]}", f"s_tir.{key[4:]}")
                     if key.startswith("tir.") and n in known]
            hints += [n for n in difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                      if n not in hints]
            hint = f"; did you mean {' or '.join(hints)}?" if hints else ""
            if key.startswith("tir.") and hints:
                hint += " (TVM 0.20+ renamed tir.* passes to tirx.* and s_tir.*)"
            raise FluidMLError(f"unknown pass-config key {key!r}{hint}")
        typ = known[key]
        if not isinstance(value, str):
            out[key] = value
        elif typ in _BOOL_TYPES:
            low = value.strip().lower()
            if low not in _TRUE | _FALSE:
                raise FluidMLError(f"{option('pass_config')} {key} expects 0 or 1 (bool), "
                                   f"got {value!r}")
            out[key] = low in _TRUE
        elif typ in _INT_TYPES:
            try:
                out[key] = int(value)
            except ValueError:
                raise FluidMLError(f"{option('pass_config')} {key} expects an integer, "
                                   f"got {value!r}") from None
        elif typ in _STR_TYPES:
            out[key] = value
        else:
            raise FluidMLError(f"{option('pass_config')} {key} takes a {typ} object, which a "
                               "KEY=VALUE item cannot give: set it from Python "
                               "(tvm.transform.PassContext(config={...}) around "
                               "fluidml_tvm.compile)")
    return out
