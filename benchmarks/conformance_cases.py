"""ONNX's backend conformance cases on disk, and one case through fluidml-tvm's public API.

:func:`generate` writes the node cases the onnx package makes in Python
(``onnx.backend.test.case.node.collect_testcases``) and the inputs/outputs of its ``light`` CNNs
as onnx's own runner makes them; :func:`collect` lists them with the cases the package ships
(``onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}``); :func:`run_case`
compiles, loads, runs and compares one case (``benchmarks/run_conformance.py`` runs them all in
worker processes, ``tests/test_conformance.py`` a sample in-process).
"""

from __future__ import annotations

import glob
import json
import os
import time

PIPELINES = {"fluidml": ["fluidml=1", "fluidml.cost=analytic"], "stock": ["fluidml=0"]}
STATUSES = ("pass", "wrong", "compile_error", "error", "crash", "timeout")
SHIPPED_KINDS = ("pytorch-converted", "pytorch-operator", "simple")


def _onnx_data_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def default_data_dir() -> str:
    import onnx

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "fluidml-tvm", f"onnx-{onnx.__version__}-backend-cases")


def _write_proto(path: str, value, type_proto, name: str) -> None:
    """One input/output as cmd_tools' generate-data writes it (tensor, sequence or optional)."""
    from onnx import TensorProto, numpy_helper

    if type_proto.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, name)
    elif type_proto.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _write_case(case_dir: str, model, data_sets, rtol: float, atol: float) -> None:
    os.makedirs(case_dir, exist_ok=True)
    with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for i, (inputs, outputs) in enumerate(data_sets):
        d = os.path.join(case_dir, f"test_data_set_{i}")
        os.makedirs(d, exist_ok=True)
        for j, (v, vi) in enumerate(zip(inputs, model.graph.input)):
            _write_proto(os.path.join(d, f"input_{j}.pb"), v, vi.type, vi.name)
        for j, (v, vi) in enumerate(zip(outputs, model.graph.output)):
            _write_proto(os.path.join(d, f"output_{j}.pb"), v, vi.type, vi.name)
    with open(os.path.join(case_dir, "data.json"), "w") as f:
        json.dump({"rtol": rtol, "atol": atol}, f)


def generate(data_dir: str, only=None) -> None:
    """Write the node cases and the light models' inputs/outputs under ``data_dir`` (once);
    ``only``: just the cases of these names (no completion marker then)."""
    import shutil
    import warnings

    import numpy as np
    import onnx
    from onnx.backend.test.case import model as model_cases
    from onnx.backend.test.case.node import collect_testcases

    marker = os.path.join(data_dir, "COMPLETE")
    if os.path.exists(marker):
        return
    wanted = (lambda name: name in only) if only is not None else (lambda name: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in collect_testcases(None):
            if not wanted(c.name):
                continue
            _write_case(os.path.join(data_dir, "node", c.name), c.model, c.data_sets, c.rtol,
                        c.atol)
    from onnx.backend.test.runner import Runner

    light = os.path.join(_onnx_data_dir(), "light")
    for c in model_cases.collect_testcases():
        if c.kind != "real" or not c.url or "/light/" not in c.url or not wanted(c.name):
            continue
        src = os.path.join(light, f"light_{c.model_name}.onnx")
        if not os.path.exists(src):
            continue
        model = onnx.load(src)
        inits = {t.name for t in model.graph.initializer}
        real = [vi for vi in model.graph.input if vi.name not in inits]
        inputs = [Runner.generate_dummy_data(vi, seed=0, name=c.model_name, random=False)
                  for vi in real]  # what onnx's runner feeds these models
        case_dir = os.path.join(data_dir, "light", c.name)
        d = os.path.join(case_dir, "test_data_set_0")
        os.makedirs(d, exist_ok=True)
        shutil.copy(src, os.path.join(case_dir, "model.onnx"))
        for j, (v, vi) in enumerate(zip(inputs, real)):
            _write_proto(os.path.join(d, f"input_{j}.pb"), np.asarray(v), vi.type, vi.name)
        for j in range(len(model.graph.output)):
            shutil.copy(os.path.join(light, f"light_{c.model_name}_output_{j}.pb"),
                        os.path.join(d, f"output_{j}.pb"))
        with open(os.path.join(case_dir, "data.json"), "w") as f:
            json.dump({"rtol": c.rtol, "atol": c.atol}, f)
    if only is None:
        with open(marker, "w") as f:
            f.write(onnx.__version__ + "\n")


def collect(data_dir: str, only=None) -> list[dict]:
    """Every case (``only``: those of these names): ``{"name", "kind", "dir", "rtol", "atol"}``,
    node cases first."""
    generate(data_dir, only)
    roots = [("node", os.path.join(data_dir, "node"))]
    roots += [(k, os.path.join(_onnx_data_dir(), k)) for k in SHIPPED_KINDS]
    roots.append(("light", os.path.join(data_dir, "light")))
    cases = []
    for kind, root in roots:
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
            d = os.path.join(root, name)
            if not os.path.exists(os.path.join(d, "model.onnx")) or (
                    only is not None and name not in only):
                continue
            tol = {"rtol": 1e-3, "atol": 1e-7}
            if os.path.exists(os.path.join(d, "data.json")):
                with open(os.path.join(d, "data.json")) as f:
                    tol.update({k: v for k, v in json.load(f).items() if k in tol})
            cases.append({"name": name, "kind": kind, "dir": d, **tol})
    return cases


# ---- one case -----------------------------------------------------------------------------------
def _load_data(case_dir: str, model) -> list:
    """[(inputs, expected)] per test_data_set, read as onnx's runner reads them."""
    from onnx.backend.test.runner import Runner

    runner = Runner.__new__(Runner)  # _load_proto uses no instance state
    sets = []
    inits = {t.name for t in model.graph.initializer}
    real = [vi for vi in model.graph.input if vi.name not in inits]
    for d in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
        inputs, expected = [], []
        n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
        for i in range(n_in):
            runner._load_proto(os.path.join(d, f"input_{i}.pb"), inputs, real[i].type)
        n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
        for i in range(n_out):
            runner._load_proto(os.path.join(d, f"output_{i}.pb"), expected,
                               model.graph.output[i].type)
        sets.append(({vi.name: v for vi, v in zip(real, inputs)}, expected))
    return sets


def _dynamic_shapes(model, inputs: dict) -> dict | None:
    """``input_shapes`` for the inputs the model leaves dynamic (what a user would have to give)."""
    import numpy as np

    out = {}
    for vi in model.graph.input:
        if vi.name in inputs and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            if not vi.type.tensor_type.HasField("shape") or any(
                    not d.HasField("dim_value") for d in dims):
                out[vi.name] = list(np.shape(inputs[vi.name]))
    return out or None


def _one_line(err: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = f"{type(err).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_case(case: dict, pipeline: str) -> dict:
    """Compile, load, run and compare one case in this process; never raises. ``case["freeze"]``
    (optional): inputs fixed to their test value at compile time (``input_values``)."""
    import warnings

    import onnx
    from onnx.backend.test.runner import Runner

    import fluidml_tvm
    from fluidml_tvm.errors import FluidMLError

    t0 = time.perf_counter()
    phase, ops = "load", []
    try:
        model = onnx.load(os.path.join(case["dir"], "model.onnx"))
        ops = sorted({n.op_type for n in model.graph.node})
        data = _load_data(case["dir"], model)
        phase = "compile"
        frozen = {k: v for k, v in data[0][0].items() if k in case.get("freeze", ())}
        compiled = fluidml_tvm.compile(model, target="x86",
                                       input_shapes=_dynamic_shapes(model, data[0][0]),
                                       pass_config=list(PIPELINES[pipeline]),
                                       input_values=frozen or None)
        phase = "run"
        loaded = compiled.load()
        for inputs, expected in data:
            got = list(loaded.run({k: v for k, v in inputs.items() if k not in frozen}).values())
            phase = "compare"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Runner.assert_similar_outputs(expected, got, rtol=case["rtol"],
                                              atol=case["atol"])
        status, detail = "pass", ""
    except FluidMLError as err:
        status, detail = "compile_error", _one_line(err)
    except AssertionError as err:
        status, detail = ("wrong", _first_lines(err)) if phase == "compare" \
            else ("error", _one_line(err))
    except Exception as err:  # noqa: BLE001 - a bug in fluidml-tvm or TVM: recorded, not raised
        status, detail = "error", _one_line(err)
    return {"status": status, "phase": phase, "detail": detail, "ops": ops,
            "seconds": round(time.perf_counter() - t0, 2)}


def _first_lines(err: BaseException, limit: int = 300) -> str:
    text = " | ".join(ln.strip() for ln in str(err).strip().splitlines() if ln.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- worker processes ---------------------------------------------------------------------------
