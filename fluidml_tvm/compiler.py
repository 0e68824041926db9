"""``fluidml_tvm.compile``: ONNX in, a TVM executable (and an exported library) out."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from . import frontend, targets
from .errors import FluidMLError
from .options import Options
from .weights import weights_path

METADATA_VERSION = 1

# Passes after which --dump-ir writes the module: FluidML's stages and stock TVM's top passes.
_DUMP_NAMES = [
    "fluidml.dispatch", "fluidml.split", "fluidml.layout", "fluidml.legalize", "fluidml.schedule",
    "fluidml.lower", "fluidml.memory", "fluidml.finalize", "LegalizeOps", "FoldConstant", "FuseOps",
    "FuseTIR", "CallTIRRewrite", "StaticPlanBlockMemory", "VMShapeLower",
]


def metadata_path(lib_path: str) -> str:
    """The metadata file written beside a library: ``model.so`` -> ``model.json``."""
    return os.path.splitext(os.fspath(lib_path))[0] + ".json"


@dataclass
class CompiledModel:
    """The result of :func:`compile`; :meth:`export` writes the library and its metadata."""

    executable: object
    target: object
    inputs: list
    outputs: list
    options: Options
    source: str
    cross_compiler: str | None = None
    planned_memory: dict | None = None
    memory_bound: dict | None = None
    memory_timeline: list | None = None
    pass_times: dict = field(default_factory=dict)
    compile_seconds: float = 0.0
    folding: str = ""
    weights: list | None = None  # [(name, numpy array)] when weights live outside the library
    gathered_weights: tuple = ()  # names of weights read only as gather tables (embeddings)
    reports: dict = field(default_factory=dict)  # stage -> decision report text

    def report(self) -> str:
        """Every decision the optimizer recorded: layouts, schedules, memory (``--report``)."""
        parts = [f"# fluidml-tvm report: {self.source} ({self.options.describe()})"]
        for stage in ("split_projection", "residual_order", "layout", "fuse_conv_pool",
                      "schedule"):
            text = self.reports.get(stage)
            parts.append(f"## {stage}\n{text if text else '(stage off or nothing recorded)'}")
        mem = []
        for name, planned in (self.planned_memory or {}).items():
            bound = (self.memory_bound or {}).get(name)
            mem.append(f"{name}: planned {planned} bytes, live-set lower bound {bound} bytes")
        parts.append("## memory\n" + ("\n".join(mem) or "(no plan recorded)"))
        if self.weights is not None:
            total = sum(a.nbytes for _, a in self.weights)
            parts.append(f"## weights\n{len(self.weights)} tensors, {total} bytes, stored "
                         "beside the library (fluidml.weights)")
        return "\n\n".join(parts) + "\n"

    def metadata(self) -> dict:
        return {
            "format": "fluidml-tvm",
            "version": METADATA_VERSION,
            "source": self.source,
            "target": _to_plain(self.target.export()),
            "target_kind": self.target.kind.name,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "options": self.options.to_dict(),
            "pipeline": self.options.describe(),
            "planned_memory_bytes": self.planned_memory,
            "live_set_lower_bound_bytes": self.memory_bound,
            "compile_seconds": round(self.compile_seconds, 3),
            "shape_folding": self.folding,
            "weights": None if self.weights is None else {
                "count": len(self.weights),
                "bytes": int(sum(a.nbytes for _, a in self.weights)),
            },
        }

    def export(self, path: str, cross_compiler: str | None = None) -> str:
        """Write the shared library to ``path`` and metadata beside it; returns ``path``."""
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FluidMLError(f"output directory does not exist: {parent}")
        cc = cross_compiler or self.cross_compiler
        kwargs = {}
        if cc:
            import shutil

            import tvm.support.cc

            if shutil.which(cc) is None:
                raise FluidMLError(
                    f"cross compiler {cc!r} not found on PATH (on Debian/Ubuntu: "
                    "apt-get install gcc-aarch64-linux-gnu), or pass --cross-compiler"
                )
            kwargs["fcompile"] = tvm.support.cc.cross_compiler(cc)
        tmp = path + ".tmp.so"
        try:
            self.executable.export_library(tmp, **kwargs)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        meta = self.metadata()
        meta["cross_compiler"] = cc
        if self.weights is not None:
            from .weights import write_weights

            wpath = weights_path(path)
            meta["weights"]["file"] = os.path.basename(wpath)
            meta["weights"]["index"] = write_weights(wpath, self.weights,
                                                     gathered=self.gathered_weights)
        with open(metadata_path(path), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        return path

    def load(self, device=None, num_threads=None):
        """A runnable model in this process, without exporting (host targets only)."""
        from .runtime import Model

        return Model.from_executable(self.executable, self.metadata(), device, num_threads,
                                     weights=self.weights)


def _to_plain(obj):
    """A target's ``export()`` (FFI maps, arrays, nested targets) as plain JSON values."""
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if hasattr(obj, "export"):  # a nested Target (the host)
        return _to_plain(obj.export())
    if hasattr(obj, "__iter__"):
        return [_to_plain(v) for v in obj]
    return str(obj)


def _external_weights(opts: Options, target, cross) -> bool:
    if opts.weights == "external":
        return True
    if opts.weights == "embedded":
        return False
    return target.kind.name == "llvm" and cross is None  # auto: runs on this machine


def resolve_options(options=None, pass_config=None) -> tuple[Options, dict]:
    """Options from (in increasing priority) the current PassContext, ``options``, ``pass_config``.

    ``pass_config`` is a list of ``KEY=VALUE`` strings or a dict; keys outside ``fluidml.*`` are
    returned as TVM PassContext config.
    """
    from .options import split_pass_config

    base = options if options is not None else Options.from_context()
    if isinstance(pass_config, dict):
        pass_config = [f"{k}={v}" for k, v in pass_config.items()]
    ours, theirs = split_pass_config(pass_config or [])
    return Options.from_pass_config(ours, base=base), theirs


def compile(  # noqa: A001
    model,
    target="x86",
    input_shapes=None,
    options: Options | None = None,
    pass_config=None,
    print_ir_after=None,
    dump_ir: str | None = None,
    progress: bool = False,
    timing: bool = False,
):
    """Compile an ONNX model for ``target``.

    Parameters
    ----------
    model
        Path to an ``.onnx`` file or an ``onnx.ModelProto``.
    target
        Preset name (``x86``, ``rasp4b``, ``jetson-orin``, ``cuda``), TVM tag, JSON string, dict or
        ``tvm.target.Target``.
    input_shapes
        ``{name: [dims]}`` or tvmc's string form ``"name:[1,3,224,224] other:[1,128]"``.
    options, pass_config
        :class:`Options`, and/or ``["fluidml.layout=0", ...]`` (tvmc ``--pass-config`` items;
        non-``fluidml`` keys go to TVM's PassContext).
    print_ir_after, dump_ir
        Pass names whose output IR is printed; a directory that receives the IR after each stage.
    progress, timing
        Print stage progress / the per-pass timing table to stderr.
    """
    import tvm

    from . import config_keys, instruments
    from .pipeline import get_pipeline

    t0 = time.perf_counter()
    config_keys.register()
    opts, tvm_config = resolve_options(options, pass_config)
    tgt, cross = targets.resolve(target)
    if isinstance(input_shapes, str):
        input_shapes = frontend.parse_input_shapes(input_shapes)
    say = (lambda msg: print(f"[fluidml-tvm] {msg}", file=sys.stderr, flush=True)) if progress \
        else (lambda msg: None)
    source = model if isinstance(model, (str, os.PathLike)) else "<onnx.ModelProto>"
    say(f"importing {source}")
    imported = frontend.import_onnx(model, input_shapes)
    say(f"  {imported.folding}; inputs: "
        + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in imported.inputs))
    say(f"compiling for {tgt.kind.name} ({opts.describe()})")

    capture = instruments.CaptureAfter(["StaticPlanBlockMemory", "fluidml.memory"])
    after_split = instruments.CaptureAfter(["fluidml.split"])
    after_layout = instruments.CaptureAfter(["fluidml.layout"])
    after_schedule = instruments.CaptureAfter(["fluidml.schedule"])
    times = instruments.PassTimes()
    inst = [capture, after_split, after_layout, after_schedule, times]
    if progress:
        inst.append(instruments.StageProgress())
    printer = None
    if print_ir_after:
        names = [print_ir_after] if isinstance(print_ir_after, str) else list(print_ir_after)
        printer = instruments.PrintIRAfter(names)
        inst.append(printer)
    if dump_ir:
        inst.append(instruments.DumpIR(dump_ir, _DUMP_NAMES))
    config = dict(tvm_config)
    if config_keys.register():
        config.update({k: v for k, v in opts.to_dict().items()})
    externalize = None
    if opts.enable and _external_weights(opts, tgt, cross):
        from .passes.external_weights import ExternalizeWeights

        externalize = ExternalizeWeights()
    try:
        with tvm.transform.PassContext(opt_level=3, config=config, instruments=inst):
            pipeline = get_pipeline(tgt, opts, before_finalize=[externalize] if externalize else ())
            ex = tvm.compile(imported.mod, target=tgt, relax_pipeline=pipeline)
    except FluidMLError:
        raise
    except (RuntimeError, ValueError, tvm.error.InternalError) as err:
        # TVM 0.27 raises RuntimeError subclasses (or forwards ValueError) from C++.
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        raise FluidMLError(
            f"TVM failed to compile the model: {type(err).__name__}: "
            f"{lines[-1] if lines else err} (FLUIDML_TVM_DEBUG=1 with the CLI shows the traceback)"
        ) from err
    if printer is not None and not printer.seen:
        say(f"warning: --print-ir-after: no pass named {', '.join(printer.names)} ran")
    planned = bound = timeline = None
    if capture.mod is not None:
        from .passes import memory_analysis

        planned = memory_analysis.planned_bytes(capture.mod)
        # The bound of the binding order the planner emitted (it may have reordered).
        bound = memory_analysis.live_set_lower_bound(capture.mod)
        timeline = memory_analysis.memory_timeline(capture.mod, "main")
    reports = {}
    for stage, cap in (("split_projection", after_split), ("residual_order", after_split),
                       ("layout", after_layout), ("fuse_conv_pool", after_schedule),
                       ("schedule", after_schedule)):
        attrs = cap.mod.attrs if cap.mod is not None else None
        key = f"fluidml.{stage}_report"
        if attrs is not None and key in attrs:
            reports[stage] = str(attrs[key])
    elapsed = time.perf_counter() - t0
    say(f"compiled in {elapsed:.1f} s")
    if timing:
        print("[fluidml-tvm] slowest passes:\n" + times.table(), file=sys.stderr)
    result = CompiledModel(
        executable=ex, target=tgt, inputs=imported.inputs, outputs=imported.outputs,
        options=opts, source=str(source), cross_compiler=cross, planned_memory=planned,
        memory_bound=bound, memory_timeline=timeline,
        weights=list(externalize.weights) if externalize is not None else None,
        gathered_weights=tuple(sorted(externalize.gathered)) if externalize is not None else (),
        reports=reports,
        pass_times=times.times, compile_seconds=elapsed, folding=imported.folding,
    )
    if _verify_layout_now(opts, tgt, cross, reports):
        result = _verify_layout(result, model, target, input_shapes, options, pass_config, say)
    return result


def _verify_layout_now(opts: Options, tgt, cross, reports: dict) -> bool:
    """A new layout plan was applied, nothing is known of its end-to-end effect, and the library
    runs on this machine: time it against the layouts-off compile (``fluidml.layout_verify``)."""
    return (opts.enable and opts.layout and opts.layout_verify and opts.cost == "measured"
            and cross is None and tgt.kind.name == "llvm"
            and "measured gain: not measured yet" in reports.get("layout", ""))


def _verify_layout(result, model, target, input_shapes, options, pass_config, say):
    """Compile with ``fluidml.layout=0``, time both in interleaved rounds, cache the ratio under
    the plan's id and return the faster compile (a plan no faster is not kept)."""
    from .passes import layout_gain

    say("verifying the layout plan end to end (fluidml.layout_verify): compiling with "
        "fluidml.layout=0 and timing both, once per new plan")
    t0 = time.perf_counter()
    res = layout_gain.measure_gain(model, target, input_shapes, pass_config or (), rounds=5,
                                   repeat=5, threads=result.options.num_threads or None,
                                   compiled_on=result, options=options)
    line = layout_gain.describe(res)
    off = res.pop("off")
    if not layout_gain.keeps(res):
        say(f"  layout plan not kept: {line}")
        off.reports["layout"] = (result.reports.get("layout", "") + "\n" + (
            f"NOT APPLIED (fluidml.layout_verify): {line}; {layout_gain.keep_rule()}: the "
            "library is the compile without the plan, and later compiles of this plan skip it"))
        off.options = result.options
        off.compile_seconds = result.compile_seconds + time.perf_counter() - t0
        return off
    say(f"  layout plan kept: {line}")
    result.reports["layout"] = result.reports.get("layout", "") + "\n" + (
        f"verified (fluidml.layout_verify): {line}")
    result.compile_seconds += time.perf_counter() - t0
    return result
