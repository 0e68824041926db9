"""The ``fluidml-tvm`` command line: where former ``tvmc`` users land.

Flag names follow tvmc where tvmc had them (``--target``, ``--input-shapes``, ``--pass-config``,
``-o``, ``--inputs``, ``--fill-mode``, ``--outputs``, ``--repeat``, ``--number``, ``--print-time``,
``--print-top``, ``--rpc-tracker``, ``--rpc-key``). This module only parses arguments and hands them
to the library; every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import cli_tuning
from .errors import FluidMLError, cli_api

# ``run --profile``: per-kernel times summed over at least this many runs
PROFILE_RUNS = 10


def _add_compile(sub):
    from .options import help_text

    p = sub.add_parser("compile", help="compile an ONNX model to a shared library",
                       description="Compile an ONNX model into a TVM library (plus NAME.json).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="FluidML's --pass-config keys (KEY=DEFAULT):\n" + help_text())
    p.add_argument("model", help="path to an .onnx file, or zoo:NAME[:tiny|full] for a zoo model")
    p.add_argument("--target", default="x86",
                   help="x86 | rasp4b | jetson-orin | cuda | cuda-sm90 | a TVM tag | a JSON "
                        "object (default: x86, this machine's CPU)")
    p.add_argument("--input-shapes", default=None, metavar="SHAPES",
                   help='fix input shapes, e.g. "input_ids:[1,128] attention_mask:[1,128]"')
    p.add_argument("--freeze-inputs", default=None, metavar="VALUES",
                   help='fix inputs to values at compile time, e.g. "sr:16000 flag:1 v:[1,2]": '
                        "they become constants, If nodes on them fold, and the library no "
                        "longer takes them")
    p.add_argument("--pass-config", action="append", default=[], metavar="KEY=VALUE",
                   help="fluidml=0|1 (stock TVM vs FluidML pipeline), fluidml.layout=0, ... "
                        "(every fluidml.* key is listed below); other keys go to TVM's "
                        "PassContext. Repeatable.")
    p.add_argument("-o", "--output", default=None,
                   help="output library path (default: MODEL.so beside the current directory)")
    p.add_argument("--cross-compiler", default=None,
                   help="C compiler used to link the library (default for aarch64 targets: "
                        "aarch64-linux-gnu-gcc)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after every pass with this name (e.g. FuseTIR, "
                        "fluidml.memory); repeatable")
    p.add_argument("--dump-ir", default=None, metavar="DIR",
                   help="write the IR after each pipeline stage into DIR")
    p.add_argument("--timing", action="store_true",
                   help="print where the compile time went: import, each stage, measuring "
                        "(kernels, candidates, seconds), code generation, export")
    cli_tuning.add_flags(p)
    p.add_argument("--report", action="store_true",
                   help="print every decision of the optimizer (layouts with reasons, the rule "
                        "that scheduled each kernel, planned memory vs the live-set bound)")
    p.add_argument("--measure-layout-gain", action="store_true",
                   help="also compile with fluidml.layout=0, time both in interleaved rounds and "
                        "store the on/off ratio for --report (cached per layout plan)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r = p.add_argument_group("measure on boards over TVM RPC (for --target rasp4b, ...: the "
                             "candidate kernels are timed on every free board with the key)")
    r.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="RPC tracker the boards registered with (with --rpc-key)")
    r.add_argument("--rpc-key", default=None, metavar="KEY", help="the boards' key (e.g. rasp4b)")
    r.add_argument("--rpc-wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for a free board (default 30)")


def _add_run(sub):
    p = sub.add_parser("run", help="run a compiled library",
                       description="Run a library written by 'fluidml-tvm compile'.")
    p.add_argument("library", help="the .so written by compile (its .json must be beside it)")
    p.add_argument("--inputs", default=None, help=".npz file with inputs keyed by ONNX input name")
    p.add_argument("--fill-mode", default="random", choices=["random", "zeros", "ones"],
                   help="how to make inputs missing from --inputs (default: random)")
    p.add_argument("--outputs", default=None, help="write the outputs to this .npz file")
    p.add_argument("--repeat", type=int, default=1, help="timed repetitions (default 1)")
    p.add_argument("--number", type=int, default=1, help="runs per repetition (default 1)")
    p.add_argument("--print-time", action="store_true", help="print latency statistics")
    p.add_argument("--print-top", type=int, default=None, metavar="N",
                   help="print the N largest values of each output")
    p.add_argument("--num-threads", type=int, default=None,
                   help="runtime threads (default: TVM_NUM_THREADS, else all cores)")
    p.add_argument("--profile", type=int, nargs="?", const=20, default=None, metavar="N",
                   help="print per-kernel timings (the N slowest, default 20) over --number "
                        f"runs, at least {PROFILE_RUNS}; remotely this needs 'fluidml-tvm "
                        "rpc-server' on the board")
    r = p.add_argument_group("remote run over TVM RPC (the library runs and is timed on the board)")
    r.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="RPC tracker to get a board from (with --rpc-key)")
    r.add_argument("--rpc-key", default=None, metavar="KEY",
                   help="key the board registered with at the tracker (e.g. rasp4b)")
    r.add_argument("--rpc-server", default=None, metavar="HOST:PORT",
                   help="RPC server to use directly, without a tracker")
    r.add_argument("--rpc-session-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="the server ends the session after this long (default 600; 0: never)")
    r.add_argument("--rpc-wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a free board (default 60)")


def _add_rpc_server(sub):
    p = sub.add_parser("rpc-server", help="serve this machine to 'run --rpc-tracker/--rpc-server'",
                       description="Start a TVM RPC server (tvm.rpc.Server) that also offers "
                                   "per-kernel timings. On a board with only the TVM runtime, "
                                   "'python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090 "
                                   "[--tracker HOST:PORT --key KEY]' serves as well, without "
                                   "per-kernel timings.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 on a board that the "
                        "workstation must reach)")
    p.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=9199, help="last port to try (default 9199)")
    p.add_argument("--tracker", default=None, metavar="HOST:PORT",
                   help="register with this RPC tracker (needs --key)")
    p.add_argument("--key", default="", help="device key at the tracker (e.g. rasp4b)")
    p.add_argument("--custom-addr", default=None,
                   help="address the tracker gives clients for this server (default: as seen "
                        "by the tracker)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="TVM_NUM_THREADS for the sessions (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fluidml-tvm",
        description="FluidML inference optimizations for Apache TVM: compile ONNX models with "
                    "whole-graph layout selection, static memory planning and measured schedules.",
    )
    parser.add_argument("--version", action="version", version=f"fluidml-tvm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compile(sub)
    cli_tuning.add_tune(sub)
    _add_run(sub)
    _add_rpc_server(sub)
    sub.add_parser("targets", help="list the target presets")
    _add_benchmark(sub)
    return parser


def _add_benchmark(sub):
    p = sub.add_parser(
        "benchmark", help="compare fluidml, stock TVM and ONNX Runtime on models",
        description="Latency, compile time and memory of each engine, each in its own process "
                    "(method: benchmarks/README.md). Writes JSON, a markdown table and plots.")
    p.add_argument("models", nargs="+", help="MODEL.onnx or zoo:NAME[:tiny|full]")
    p.add_argument("--engines", default="fluidml,tvm,ort",
                   help="comma-separated subset of fluidml,tvm,ort (default: all three)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every engine (default: all cores)")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per process (default 10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds, one fresh process per engine each (default 3)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timed runs per process before it stops early (default 20)")
    p.add_argument("--input-shapes", default=None, help="as for compile (for .onnx models)")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--name", default=None, help="file stem (default: DATE-HOST)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


# ---- commands ---------------------------------------------------------------------------------
def _resolve_model(spec: str):
    if spec.startswith("zoo:"):
        from .tools import zoo

        try:
            model, _ = zoo.resolve(spec)
        except (KeyError, ValueError) as err:
            raise FluidMLError(str(err).strip("'\"")) from None
        return model, spec.replace(":", "_")
    return spec, os.path.splitext(os.path.basename(spec))[0]


def cmd_compile(args) -> int:
    import time

    from .runtime.backend import compile_blocker

    if compile_blocker():  # this process ran a model with the TVM runtime alone
        raise FluidMLError(compile_blocker())
    from .compiler import compile as compile_model
    from .measure_remote import for_cli
    from .runtime import metadata_path

    model, stem = _resolve_model(args.model)
    out = args.output or f"{stem}.so"
    with for_cli(args) as farm:  # --rpc-tracker/--rpc-key: candidates timed on the boards
        result = compile_model(
            model, target=args.target, input_shapes=args.input_shapes,
            pass_config=cli_tuning.pass_config(args), print_ir_after=args.print_ir_after or None,
            dump_ir=args.dump_ir, progress=not args.quiet, input_values=args.freeze_inputs,
            tuning_records=args.tuning_records, save_tuning_records=args.save_tuning_records,
        )
    if farm is not None:
        farm.attach(result)
        for text in farm.notices:
            print(f"[fluidml-tvm] boards: {text}", file=sys.stderr)
    t0 = time.perf_counter()
    result.export(out, cross_compiler=args.cross_compiler)
    result.timing["export"] = time.perf_counter() - t0
    if args.measure_layout_gain:
        from .compiler import measure_layout_gain
        from .decisions import note
        from .layout_verify import describe

        gain = describe(measure_layout_gain(model, args.target, args.input_shapes,
                                            args.pass_config, compiled_on=result,
                                            input_values=args.freeze_inputs))
        result.decisions.setdefault("layout", []).append(note("layout", gain))
        if not args.report:
            print(f"[fluidml-tvm] layout {gain}", file=sys.stderr)
    if args.report:
        print(result.report())
    if args.timing:
        cli_tuning.print_timing(result)
    planned = result.planned_memory or {}
    mem = ", ".join(f"{k}: {v / 2**20:.2f} MiB" for k, v in planned.items()) or "n/a"
    if not args.quiet:
        print(f"[fluidml-tvm] wrote {out} and {metadata_path(out)} "
              f"(planned activation memory {mem})", file=sys.stderr)
    return 0


def _load_inputs(path):
    import numpy as np

    if path is None:
        return {}
    if not os.path.exists(path):
        raise FluidMLError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise FluidMLError(f"cannot read {path} as an .npz file: {err}") from None


def cmd_run(args) -> int:
    import numpy as np

    from .runtime import load

    if args.repeat < 1 or args.number < 1:
        raise FluidMLError("--repeat and --number must be >= 1")
    remote = bool(args.rpc_tracker or args.rpc_server)
    if remote:
        from .rpc import load_for_cli

        model = load_for_cli(args)
    else:
        from .cross import check_loadable

        check_loadable(args.library)
        model = load(args.library, num_threads=args.num_threads)
    inputs = model.complete_inputs(_load_inputs(args.inputs), args.fill_mode)
    outputs = model.run(inputs)
    if args.outputs:
        tmp = args.outputs + ".tmp.npz"
        np.savez(tmp, **outputs)
        os.replace(tmp, args.outputs)
    if args.print_top:
        for name, value in outputs.items():
            flat = value.ravel()
            top = np.argsort(flat)[::-1][: args.print_top]
            print(f"{name}: top {len(top)} (index: value): "
                  + ", ".join(f"{i}: {flat[i]:.6g}" for i in top))
    if args.print_time or args.repeat > 1:
        times = np.array(model.time(inputs, repeat=args.repeat, number=args.number)) * 1e3
        print(f"Execution time summary ({model.num_threads} threads, {args.repeat} x "
              f"{args.number} runs):")
        print(" mean (ms)   median (ms)    max (ms)     min (ms)     std (ms)")
        print(f"{times.mean():10.4f}    {np.median(times):10.4f}    {times.max():10.4f}   "
              f"{times.min():10.4f}   {times.std():10.4f}")
    if args.profile:
        from .runtime import profile

        # at least PROFILE_RUNS runs: one run's per-kernel times carry any one-off stall whole
        # (a kernel of 92 us read 2520 us in a single profiled run on a shared host)
        runs = max(args.number, PROFILE_RUNS)
        rows = model.kernel_times(inputs, number=runs) if remote \
            else profile.local_kernel_times(model, inputs, number=runs)
        print(f"Per-kernel times (summed over {runs} run(s)):")
        print(profile.format_kernel_table(rows, args.profile, metadata=model.metadata))
    if not args.outputs and not args.print_top and not args.print_time:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)} {value.dtype}, "
                  f"mean {float(np.mean(value)):.6g}")
    return 0


def cmd_targets(args) -> int:
    from .targets import describe_all

    print(describe_all())
    return 0


def cmd_rpc_server(args) -> int:
    from .rpc import serve_forever

    return serve_forever(args.host, args.port, args.port_end, args.tracker, args.key,
                         args.num_threads, args.custom_addr)


def cmd_benchmark(args) -> int:
    from .tools import bench

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in bench.ENGINES]
    if bad or not engines:
        raise FluidMLError(f"--engines takes a subset of {','.join(bench.ENGINES)}, got "
                           f"{args.engines!r}")
    if args.threads < 1 or args.repeat < 1 or args.rounds < 1:
        raise FluidMLError("--threads, --repeat and --rounds must be >= 1")
    for m in args.models:
        if not m.startswith("zoo:") and not os.path.exists(m):
            raise FluidMLError(f"model file not found: {m}")
    result = bench.run_suite(args.models, engines, args.threads, args.repeat, args.rounds,
                             args.budget, outdir=args.out, stem=args.name,
                             log=lambda m: print(m, file=sys.stderr, flush=True),
                             plot=not args.no_plots, input_shapes=args.input_shapes)
    with open(result["files"][1], encoding="utf-8") as f:
        print(f.read())
    print("wrote " + ", ".join(result["files"]), file=sys.stderr)
    return 0


def cmd_tune(args) -> int:
    return cli_tuning.cmd_tune(args, _resolve_model(args.model)[0])


COMMANDS = {"compile": cmd_compile, "tune": cmd_tune, "run": cmd_run, "targets": cmd_targets,
            "rpc-server": cmd_rpc_server, "benchmark": cmd_benchmark}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command in ("run", "rpc-server"):  # before anything imports TVM: no compiler mapped
        from .runtime.backend import prefer_runtime_only

        prefer_runtime_only()
    try:
        with cli_api():  # messages name the flags (--input-shapes), not Python's keywords
            return COMMANDS[args.command](args)
    except FluidMLError as err:
        print(f"fluidml-tvm: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fluidml-tvm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line unless asked for the traceback
        if os.environ.get("FLUIDML_TVM_DEBUG"):
            raise
        print(f"fluidml-tvm: internal error: {type(err).__name__}: "
              f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''} "
              "(set FLUIDML_TVM_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
