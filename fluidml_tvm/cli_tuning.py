"""The command line's measuring flags (``--tune-budget``, ``--retune``, ``--tuning-records``,
``--save-tuning-records``), ``--timing`` and ``fluidml-tvm tune``: tvmc's ``tune`` and
``--tuning-records`` for FluidML's measurements. Parsing only; the work is
:func:`fluidml_tvm.compiler.compile`'s."""

from __future__ import annotations

import sys

from .errors import FluidMLError
from .tuning import AUTO_BASE, AUTO_MAX, AUTO_PER_GB


def add_flags(p, tune: bool = False) -> None:
    """The measuring flags of ``compile`` (``tune=False``) and ``tune``."""
    g = p.add_argument_group("measuring (tvmc's tuning)")
    default = "no limit" if tune else (f"auto: {AUTO_BASE:g} s plus {AUTO_PER_GB:g} s a GB of "
                                       f"weights, at most {AUTO_MAX:g} s")
    g.add_argument("--tune-budget", default="-1" if tune else None, metavar="SECONDS",
                   help=f"seconds of measuring for the whole model (fluidml.tune_budget; default "
                        f"{default}): kernels with the largest share of the modelled run time "
                        "first, the rest decided by the analytic model; auto, -1: no limit, "
                        "0: measure nothing")
    g.add_argument("--retune", action="store_true",
                   help="measure again (within the budget) what the cache holds only from a "
                        "loaded machine (fluidml.retune=1)")
    g.add_argument("--tuning-records", default=None, metavar="FILE",
                   help="read tuning records (JSON lines from 'fluidml-tvm tune -o' or "
                        "--save-tuning-records) into the measurement cache first, if FILE "
                        "exists; records of another target, CPU, thread count or TVM version "
                        "are ignored with a notice")
    if not tune:
        g.add_argument("--save-tuning-records", default=None, metavar="FILE",
                       help="write the records of every cache entry this compile used to FILE")


def pass_config(args) -> list:
    """``--pass-config`` items with the measuring flags appended (they win)."""
    out = list(args.pass_config)
    if args.tune_budget is not None:
        value = str(args.tune_budget).strip().lower()
        try:
            ok = value == "auto" or int(value) >= -1
        except ValueError:
            ok = False
        if not ok:
            raise FluidMLError(f"--tune-budget takes seconds >= 0, auto or -1 (no limit), got "
                               f"{args.tune_budget}")
        out.append(f"fluidml.tune_budget={value}")
    if args.retune:
        out.append("fluidml.retune=1")
    return out


def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="measure a model's kernels and write tuning records",
                       description="Measure what a compile of MODEL measures (schedules, layout "
                                   "variants, a new layout plan's check) and write the records "
                                   "(JSON lines) to -o, without writing a library, as 'tvmc "
                                   "tune' did. Ship the file: 'fluidml-tvm compile "
                                   "--tuning-records FILE' then measures nothing it covers.")
    p.add_argument("model", help="path to an .onnx file, or zoo:NAME[:tiny|full] for a zoo model")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the records file; an existing one is read first, then this model's "
                        "records are written into it (other models' records are kept)")
    p.add_argument("--target", default="x86", help="as for compile")
    p.add_argument("--input-shapes", default=None, metavar="SHAPES", help="as for compile")
    p.add_argument("--freeze-inputs", default=None, metavar="VALUES", help="as for compile")
    p.add_argument("--pass-config", action="append", default=[], metavar="KEY=VALUE",
                   help="as for compile")
    p.add_argument("--timing", action="store_true", help="as for compile")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_flags(p, tune=True)


def cmd_tune(args, model) -> int:
    """``fluidml-tvm tune``: ``model`` is the resolved ONNX path or ModelProto."""
    from .compiler import compile as compile_model

    result = compile_model(
        model, target=args.target, input_shapes=args.input_shapes,
        pass_config=pass_config(args), progress=not args.quiet,
        input_values=args.freeze_inputs, tuning_records=args.tuning_records or args.output,
        save_tuning_records=args.output,
    )
    if args.timing:
        print_timing(result)
    m = result.tuning.get("measuring", {})
    kernels = sum(v["kernels"] for v in m.values())
    print(f"[fluidml-tvm] measured {kernels} kernels in {result.tuning['spent_s']:.1f} s; "
          f"records in {args.output}", file=sys.stderr)
    return 0


def print_timing(result) -> None:
    from .instruments import timing_table

    print(timing_table(result.timing, result.tuning, result.pass_times), file=sys.stderr)
