"""``fluidml_tvm.compile``: ONNX in, a TVM executable (and an exported library) out.

One compile is one run of the pipeline (:func:`build`); with ``fluidml.layout_verify`` a new
layout plan is then checked end to end against the layouts-off build
(:mod:`fluidml_tvm.layout_verify`) and the faster one returned. All measuring of a compile -
schedules, layout variants, that check - shares one tune budget (``fluidml.tune_budget``,
:class:`fluidml_tvm.tuning.TuneSession`); tuning records (:mod:`fluidml_tvm.records`) are read
into the cache before and written from what the compile used after.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from . import frontend, layout_verify, targets, tuning
from .artifact import CompiledModel
from .decisions import Decision, note
from .errors import FluidMLError
from .options import Options, resolve, tvm_pass_config
from .pipeline import DECISION_STAGES, PHASES, dump_names, phase_name


def _external_weights(opts: Options, target, cross) -> bool:
    if opts.weights == "external":
        return True
    if opts.weights == "embedded":
        return False
    return target.kind.name == "llvm" and cross is None  # auto: runs on this machine


def build(
    model,
    target="x86",
    input_shapes=None,
    options: Options | None = None,
    pass_config=None,
    print_ir_after=None,
    dump_ir: str | None = None,
    progress: bool = False,
    timing: bool = False,
    input_values=None,
    session: tuning.TuneSession | None = None,
) -> CompiledModel:
    """One run of the pipeline on an ONNX model (no layout verification); the arguments are
    :func:`compile`'s. ``session``: the compile's tuning session (None: a new one from the
    options, active during the build); the result's ``timing`` says where the time went."""
    import tvm

    from . import config_keys, instruments
    from .pipeline import get_pipeline
    from .schedules import stack_buffers

    t0 = time.perf_counter()
    keys_registered = config_keys.register()
    opts, tvm_config = resolve(options, pass_config)
    tgt, cross = targets.resolve(target)
    if isinstance(input_shapes, str):
        input_shapes = frontend.parse_input_shapes(input_shapes)
    say = _say(progress)
    source = model if isinstance(model, (str, os.PathLike)) else "<onnx.ModelProto>"
    say(f"importing {source}")
    imported = frontend.import_onnx(model, input_shapes, input_values)
    own = session is None
    if own:
        session = tuning.TuneSession(opts.tune_budget, opts.retune, tuning.stderr_if(progress))
    session.size_to(imported.weight_bytes())  # an auto budget grows with the weights
    t_import = time.perf_counter() - t0
    say(f"  {imported.folding}; inputs: "
        + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in imported.inputs))
    say(f"compiling for {tgt.kind.name} ({opts.describe()})")

    capture = instruments.CaptureAfter(["StaticPlanBlockMemory", phase_name("memory")])
    recorded = instruments.CaptureDecisions(DECISION_STAGES)
    times = instruments.PassTimes()
    phases = instruments.PhaseTimes([phase_name(p) for p in PHASES])
    inst = [capture, recorded, times, phases]
    if progress:
        inst.append(instruments.StageProgress())
    printer = None
    if print_ir_after:
        names = [print_ir_after] if isinstance(print_ir_after, str) else list(print_ir_after)
        printer = instruments.PrintIRAfter(names)
        inst.append(printer)
    if dump_ir:
        inst.append(instruments.DumpIR(dump_ir, dump_names()))
    config = tvm_pass_config(tvm_config)
    if keys_registered:
        config.update({k: v for k, v in opts.to_dict().items()})
    externalize = None
    if opts.enable and _external_weights(opts, tgt, cross):
        from .passes.external_weights import ExternalizeWeights

        externalize = ExternalizeWeights()
    measure_peak = opts.enable and opts.schedule and tgt.kind.name == "llvm" and cross is None
    kstats = None
    if opts.enable and opts.kernel_cache and tgt.kind.name == "llvm" and cross is None:
        from . import kernel_cache

        kstats = kernel_cache.Stats()
    if measure_peak:
        from .schedules import peaks

        peaks.reserve(tgt, opts, session)
    try:
        stacked = opts.enable and opts.schedule and opts.stack_buffers
        with session.activate() if own else contextlib.nullcontext(), \
                stack_buffers.use(stacked), \
                tvm.transform.PassContext(opt_level=3, config=config, instruments=inst):
            pipeline = get_pipeline(tgt, opts, before_finalize=[externalize] if externalize else ())
            t_start = time.perf_counter()
            tir = stack_buffers.pipeline_name(tgt, stacked)
            if kstats is not None:
                ex = kernel_cache.compile(imported.mod, tgt, pipeline, opts.cache_dir, kstats,
                                          tir_pipeline=tir)
            else:
                ex = tvm.compile(imported.mod, target=tgt, relax_pipeline=pipeline,
                                 tir_pipeline=tir)
            t_end = time.perf_counter()
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
        from .passes.memory import lifetimes

        planned = lifetimes.planned_bytes(capture.mod)
        # The bound of the binding order the planner emitted (it may have reordered).
        bound = lifetimes.live_set_lower_bound(capture.mod)
        timeline = lifetimes.memory_timeline(capture.mod, "main")
    peak = None
    if measure_peak:
        peak = peaks.host_peak(tgt, opts, session)  # once per host and threads, then cached
        peak = peaks.reconcile(peak, _timed_rates(recorded.decisions), tgt, opts)
    elapsed = time.perf_counter() - t0
    say(f"compiled in {elapsed:.1f} s")
    steps = {"import": t_import}
    steps.update({f"stage {n[len('fluidml.'):]}": t for n, t in phases.times.items()})
    if phases.last_end is None:  # the stock pipeline: pipeline and code generation in one
        steps["pipeline+codegen"] = t_end - t_start
    else:
        steps["codegen"] = t_end - phases.last_end
    steps["memory report"] = time.perf_counter() - t_end
    result = CompiledModel(
        executable=ex, target=tgt, inputs=imported.inputs, outputs=imported.outputs,
        options=opts, source=str(source), cross_compiler=cross, planned_memory=planned,
        memory_bound=bound, memory_timeline=timeline,
        weights=list(externalize.weights) if externalize is not None else None,
        gathered_weights=tuple(sorted(externalize.gathered)) if externalize is not None else (),
        decisions=recorded.decisions, host_peak=peak,
        pass_times=times.times, compile_seconds=elapsed, folding=imported.folding,
    )
    result.timing = steps
    if kstats is not None:
        session.kernels["found"] += kstats.found
        session.kernels["built"] += kstats.built
    result.tuning = session.snapshot()
    if timing:
        print(instruments.timing_table(steps, result.tuning, times.times), file=sys.stderr)
    return result


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
    input_values=None,
    tuning_records: str | None = None,
    save_tuning_records: str | None = None,
) -> CompiledModel:
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
        non-``fluidml`` keys go to TVM's PassContext). ``fluidml.tune_budget`` bounds the
        seconds spent measuring.
    print_ir_after, dump_ir
        Pass names whose output IR is printed; a directory that receives the IR after each stage.
    progress, timing
        Print stage and tuning progress / where the compile time went to stderr.
    input_values
        Inputs fixed to a value at compile time, ``{"sr": 16000}`` or the ``--freeze-inputs``
        string ``"sr:16000 flag:1"``: they become constants, ``If`` nodes on them are folded, and
        the compiled model no longer takes them.
    tuning_records, save_tuning_records
        A tuning-records file (:mod:`fluidml_tvm.records`) read into the measurement cache first
        when it exists; a file the records of every cache entry this compile used are written
        to (the same path updates a team's file).
    """
    say = _say(progress)
    opts, _ = resolve(options, pass_config)
    session = tuning.TuneSession(opts.tune_budget, opts.retune, tuning.stderr_if(progress))
    notes = []
    if tuning_records and os.path.exists(tuning_records):
        notes = import_records(tuning_records, target, opts, say)
    t0 = time.perf_counter()
    with session.activate():
        result = build(model, target, input_shapes, options, pass_config, print_ir_after,
                       dump_ir, progress, False, input_values=input_values, session=session)
        if _verify_layout_now(result):
            result = _verify_within_budget(result, session, model, target, input_shapes,
                                           options, pass_config, say, input_values)
    result.compile_seconds = time.perf_counter() - t0
    result.tuning = session.snapshot()
    if opts.enable:  # what the budget did, read by --report (stock TVM measures nothing)
        sched = result.decisions.setdefault("schedule", [])
        sched += [note("schedule", f"tuning records: {n}") for n in notes]
        sched.append(note("schedule", session.summary(), **result.tuning))
    if save_tuning_records:
        save_records(save_tuning_records, session, opts, say)
    if timing:
        from . import instruments

        print(instruments.timing_table(result.timing, result.tuning, result.pass_times),
              file=sys.stderr)
    return result


def import_records(path: str, target, opts: Options, say) -> list[str]:
    """Read tuning records into the cache (before the compile's session starts, so they count
    as used only where the compile reads them). Returns the notices, also printed."""
    from . import records
    from .costdb import CostDB, target_key
    from .schedules.target_info import cpu_info

    if not opts.cache_dir:
        raise FluidMLError("--tuning-records needs the measurement cache (fluidml.cache_dir)")
    tgt, _ = targets.resolve(target)
    keys = {target_key(tgt), target_key(tgt, cpu_info(tgt).key())}
    db = CostDB(opts.cache_dir)
    try:
        taken, notices = records.load(path, db, keys)
    finally:
        db.close()
    say(f"tuning records: {taken} entries read from {path}")
    for n in notices:  # never silent, even with -q: these records were not used
        print(f"[fluidml-tvm] tuning records: {n}", file=sys.stderr, flush=True)
    return [f"{taken} entries read from {path}", *notices]


def save_records(path: str, session, opts: Options, say) -> int:
    """Write the records of every cache entry the session used to ``path``."""
    from . import records
    from .costdb import CostDB

    if not opts.cache_dir:
        raise FluidMLError("saving tuning records needs the measurement cache "
                           "(fluidml.cache_dir)")
    db = CostDB(opts.cache_dir)
    try:
        n = records.export(path, db, session.used)
    except OSError as err:
        raise FluidMLError(f"cannot write tuning records {path}: {err.strerror}") from None
    finally:
        db.close()
    say(f"wrote {n} tuning records to {path}")
    return n


def _timed_rates(decisions: dict) -> list[float]:
    """GFLOP/s of the conv/matmul kernels whose chosen schedule was timed (now or in the cache)."""
    from .roofline import is_compute_kernel, rates

    return [rates(d.data, d.data["seconds"])[0] for d in decisions.get("schedule") or []
            if d.data.get("seconds") and is_compute_kernel(d.subject, d.choice)]


def _say(progress: bool):
    if progress:
        return lambda msg: print(f"[fluidml-tvm] {msg}", file=sys.stderr, flush=True)
    return lambda msg: None


def _verify_layout_now(result: CompiledModel) -> bool:
    """A new layout plan was applied, nothing is known of its end-to-end effect, and the library
    runs on this machine: time it against the layouts-off compile (``fluidml.layout_verify``)."""
    opts = result.options
    return (opts.enable and opts.layout and opts.layout_verify and opts.cost == "measured"
            and result.cross_compiler is None and result.target.kind.name == "llvm"
            and layout_verify.unmeasured(result))


def _layout_off(pass_config) -> list:
    if isinstance(pass_config, dict):
        pass_config = [f"{k}={v}" for k, v in pass_config.items()]
    rest = [p for p in (pass_config or ()) if not p.startswith("fluidml.layout=")]
    return [*rest, "fluidml.layout=0"]


def _verify_within_budget(result, session, model, target, input_shapes, options, pass_config,
                          say, input_values):
    """Check the new layout plan end to end when the tune budget affords it (a second build
    without the plan, then both timed); else keep the plan and say it is not checked. The
    second build is compile work (the kernels the plan did not change come from the kernel
    cache); the timed runs are the measuring the budget must afford, with the share the layout
    stage kept for them (:data:`fluidml_tvm.tuning.LAYOUT_CHECK_SHARE`)."""
    session.release("layout check")
    earlier = not session.revisits and layout_verify.left_unchecked(result)
    loaded, estimate, available = None, 0.0, session.available()
    if not earlier:  # loading the build is part of the check (check_seconds counts it)
        with session.measuring("verify", kernels=0):  # a warm-up and two runs: the check's cost
            loaded = result.load(num_threads=result.options.num_threads or None)
            estimate = layout_verify.check_seconds(min(loaded.time(repeat=2)))
    if earlier or (not session.unbounded and estimate > available):
        why = ("an earlier compile's tune budget left it unchecked" if earlier else
               f"timing both builds takes ~{estimate:.0f} s, beyond the tune budget left "
               f"({session.left():.0f} s of {session.budget:.0f} s)")
        line = (f"NOT CHECKED (fluidml.layout_verify): {why}; the plan is applied as modelled "
                "from its measured kernels. --retune with a larger --tune-budget, or 'fluidml-tvm "
                "tune', checks it once (cached per plan)")
        say(f"  layout plan {line}")
        session.skip("verify")
        if not earlier:
            layout_verify.left_unchecked(result, mark=True)
        result.decisions["layout_verify"] = [Decision(
            layout_verify.STAGE, "plan " + ", ".join(layout_verify.applied_ids(result)),
            "not checked", line, {"estimate_s": estimate, "left_s": session.left()})]
        return result
    t0 = time.perf_counter()
    session.reserve("layout check", estimate)  # the second build's measuring leaves it
    out = _verify_layout(result, model, target, input_shapes, options, pass_config, say,
                         input_values, session, loaded)
    out.timing["layout check"] = time.perf_counter() - t0
    return out


def _verify_layout(result, model, target, input_shapes, options, pass_config, say,
                   input_values=None, session=None, loaded=None):
    """Compile with ``fluidml.layout=0``, time both in interleaved rounds, cache the ratio under
    the plan's id and return the faster compile (a plan no faster is not kept)."""
    say("verifying the layout plan end to end (fluidml.layout_verify): compiling with "
        "fluidml.layout=0 and timing both, once per new plan")
    off = build(model, target, input_shapes, options, _layout_off(pass_config),
                input_values=input_values, session=session)
    if session is not None:
        session.release("layout check")
    with session.measuring("verify", kernels=1, candidates=2) if session else \
            contextlib.nullcontext():
        res = layout_verify.measure(result, off, layout_verify.CHECK_ROUNDS,
                                    layout_verify.CHECK_REPEAT,
                                    threads=result.options.num_threads or None, loaded_on=loaded)
    verdict = layout_verify.decision(res)
    line = layout_verify.describe(res)
    if verdict.choice != "kept":
        say(f"  layout plan not kept: {line}")
        off.decisions["layout"] = result.decisions.get("layout", [])
        off.decisions["layout_verify"] = [verdict]
        off.options = result.options
        off.timing = result.timing
        return off
    say(f"  layout plan kept: {line}")
    result.decisions["layout_verify"] = [verdict]
    return result


def measure_layout_gain(model, target="x86", input_shapes=None, pass_config=(), rounds: int = 7,
                        repeat: int = 10, threads: int | None = None, compiled_on=None,
                        options=None, input_values=None) -> dict:
    """Compile ``model`` with the layout stage on (unless ``compiled_on`` is given) and off, time
    both interleaved and store the ratio under the plan's id (``--measure-layout-gain``).
    Returns :func:`fluidml_tvm.layout_verify.measure`'s result with ``off``, the layouts-off
    :class:`CompiledModel`."""
    if isinstance(pass_config, dict):
        pass_config = [f"{k}={v}" for k, v in pass_config.items()]
    rest = [p for p in (pass_config or ()) if not p.startswith("fluidml.layout=")]
    on = compiled_on or compile(model, target, input_shapes, options=options,
                                pass_config=[*rest, "fluidml.layout=1"],
                                input_values=input_values)
    off = build(model, target, input_shapes, options, _layout_off(pass_config),
                input_values=input_values)
    res = layout_verify.measure(on, off, rounds, repeat, threads)
    res["off"] = off
    return res
