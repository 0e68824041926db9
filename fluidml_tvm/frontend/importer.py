"""Steps 3 and 5: operator support, and the conversion by TVM's ONNX importer.

A failure inside ``tvm.relax.frontend.onnx.from_onnx`` becomes one :class:`FluidMLError` line
naming the ONNX node (name and op type) where it happened. The importer prints on its way down
(a dump of the Relax inputs of the failing operator on stdout, a ``BlockBuilder destroyed``
warning from C++ on stderr): the process's file descriptors 1 and 2 are captured around the
import, and what was captured is shown only with ``FLUIDML_TVM_DEBUG=1``.

The failing node is read from the traceback: the importer's loops over the nodes of the main graph
(``_construct_nodes``) and of ``If`` branches (``_convert_subgraph``) hold it in their local
``node`` (innermost frame: the node inside a branch; the outer ones: the ``If`` nodes around it).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import logging
import os
import sys
import tempfile
import traceback

from ..errors import FluidMLError

log = logging.getLogger("fluidml_tvm")

# Operators that TVM's importer handles outside its converter map.
_DIRECT_OPS = {"If", "Constant"}
# Operators that fluidml rewrites into others before the import (frontend/rnn.py).
_EXPANDED_OPS = {"LSTM", "GRU"}
# The importer's loops over a graph's nodes (main graph, If branches): each holds a local `node`.
_NODE_LOOPS = ("_construct_nodes", "_convert_subgraph")


def unsupported_ops(proto) -> collections.Counter:
    """``{op_type: count}`` of the nodes TVM's ONNX importer has no converter for (LSTM and GRU
    count as supported: :mod:`fluidml_tvm.frontend.rnn` expands them first)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    convert_map = _get_convert_map()
    missing = collections.Counter()
    for node in proto.graph.node:
        default_domain = node.domain in ("", "ai.onnx")
        if node.op_type in convert_map or node.op_type in _DIRECT_OPS:
            continue
        if default_domain and node.op_type in _EXPANDED_OPS:
            continue
        key = node.op_type if default_domain else f"{node.domain}.{node.op_type}"
        missing[key] += 1
    return missing


def check_supported(proto) -> None:
    missing = unsupported_ops(proto)
    if missing:
        listing = ", ".join(f"{op} x{n}" for op, n in sorted(missing.items()))
        raise FluidMLError(
            f"{len(missing)} operator type(s) not supported by TVM's ONNX importer: {listing}"
        )


@contextlib.contextmanager
def captured_output():
    """Send everything written to file descriptors 1 and 2 (C++ and Python alike) into a buffer;
    yields a list that holds the captured text once the block ends."""
    text = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    py_out = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        try:
            saved = [os.dup(1), os.dup(2)]
        except OSError:  # no fd 1/2 to capture (a daemon): Python's streams only
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_out):
                yield text
            text.append(py_out.getvalue())
            return
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_out):
                yield text
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            text.append(py_out.getvalue() + tmp.read().decode("utf-8", errors="replace"))


def failing_node(err: BaseException) -> str | None:
    """``node 'name' (OpType)`` for the ONNX node the importer was converting when ``err`` was
    raised (with the ``If`` nodes around it), or None when the traceback does not show one."""
    found, frames = [], set()
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name not in _NODE_LOOPS or id(frame) in frames:
            continue  # a frame shows up twice where the importer re-raises
        frames.add(id(frame))
        node = frame.f_locals.get("node")
        if node is not None and hasattr(node, "op_type"):
            found.append(node)
    if not found:
        return None
    *outer, inner = found
    text = _describe(inner)
    for node in reversed(outer):
        text += f" inside {_describe(node)}"
    return text


def _describe(node) -> str:
    if node.name:
        return f"node '{node.name}' ({node.op_type})"
    out = next((o for o in node.output if o), None)
    return f"unnamed {node.op_type} node" + (f" (output '{out}')" if out else "")


def _debug() -> bool:
    return bool(os.environ.get("FLUIDML_TVM_DEBUG"))


def to_relax(proto, specs: list):
    """Convert to a Relax ``IRModule`` (``main`` takes the inputs in ``specs`` order)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {s.name: list(s.shape) for s in specs}
    dtype_dict = {s.name: s.dtype for s in specs}
    mod = failure = None
    with captured_output() as printed:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = from_onnx(proto, shape_dict=shape_dict, dtype_dict=dtype_dict)
        except Exception as err:
            where = failing_node(err)
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            reason = f"{type(err).__name__}: {lines[-1] if lines else '(no message)'}"
            failure = (where, reason, traceback.format_exc() if _debug() else "")
            del err
        # The importer's BlockBuilder warns when it is freed with open blocks: free it here.
        gc.collect()
    if printed[0].strip():
        log.debug("TVM's ONNX importer printed:\n%s", printed[0])
        if _debug():
            sys.stderr.write(printed[0])
    if failure is None:
        return mod
    where, reason, trace = failure
    if trace:
        sys.stderr.write(trace)
    at = f" at {where}" if where else ""
    raise FluidMLError(f"TVM's ONNX importer failed{at}: {reason}")
