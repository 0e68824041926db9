"""LSTM and GRU as plain ONNX ops, unrolled over a static sequence length.

TVM 0.27's ONNX importer has no converter for LSTM or GRU. :func:`expand_rnns` rewrites each
LSTM/GRU node of the main graph, before the import, into Slice, Transpose, MatMul, Add, Sub, Mul,
Sigmoid, Tanh, Reshape and Concat nodes (Slice rather than Gather: TVM legalizes Gather into
``take`` in "fast" mode with one warning each): the input projection of all time steps is one
MatMul per direction, then one recurrent step per time step and direction.

Supported: ``direction`` forward, reverse and bidirectional; ``B``, ``initial_h``, ``initial_c``
present or absent (constants or run-time tensors, as ``W`` and ``R``); ``sequence_lens`` absent or
a constant equal to the sequence length for every batch entry (a run-time ``sequence_lens`` can be
fixed with ``--freeze-inputs``); ``layout=0``; the default activations (LSTM Sigmoid, Tanh, Tanh;
GRU Sigmoid, Tanh); GRU ``linear_before_reset`` 0 and 1; any of ``Y``, ``Y_h``, ``Y_c`` unused.
Needs: ``X`` of static shape ``[seq_length, batch, input_size]`` once ``--input-shapes`` fixed the
graph inputs. Refused with one line naming the node and what it uses: peepholes (``P``), other
activations, ``clip``, ``layout=1``, ``input_forget=1``, a ``sequence_lens`` that is not a
constant or is shorter than the sequence.

Equations (ONNX spec; gates in the order of ``W``/``R``/``B``: LSTM i, o, f, c; GRU z, r, h)::

    LSTM  g = x_t W^T + Wb + Rb + H R^T
          i, o, f = sigmoid(g_i, g_o, g_f);  C = f*C + i*tanh(g_c);  H = o*tanh(C)
    GRU   z, r = sigmoid(x_t W_zr^T + Wb_zr + Rb_zr + H R_zr^T)
          linear_before_reset=0: h~ = tanh(x_t W_h^T + Wb_h + Rb_h + (r*H) R_h^T)
          linear_before_reset=1: h~ = tanh(x_t W_h^T + Wb_h + r*(H R_h^T + Rb_h))
          H = h~ + z*(H - h~)                                  (= (1-z)*h~ + z*H)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FluidMLError, option, values_example
from .rnn_graph import Emitter, constant_values, describe, value_types

_GATES = {"LSTM": 4, "GRU": 3}
_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_DIRECTIONS = ("forward", "reverse", "bidirectional")


@dataclass
class Rnn:
    """One LSTM/GRU node, checked: what the expansion needs to know."""

    kind: str
    seq: int
    batch: int
    hidden: int
    directions: list
    dtype: np.dtype
    linear_before_reset: int
    x: str
    w: str
    r: str
    b: str
    h0: str
    c0: str
    y: str
    y_h: str
    y_c: str


def is_rnn(node) -> bool:
    return node.op_type in _GATES and node.domain in ("", "ai.onnx")


def expand_rnns(proto, opset: int):
    """A copy of ``proto`` with every LSTM/GRU node of the main graph expanded.

    Returns ``(model, note)``; ``note`` is None when the graph has none."""
    import onnx

    count = sum(1 for n in proto.graph.node if is_rnn(n))
    if not count:
        return proto, None
    types = value_types(proto)
    consts = constant_values(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    taken = {o for n in model.graph.node for o in list(n.output) + [n.name]}
    taken |= {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    nodes, steps = [], 0
    for index, node in enumerate(model.graph.node):
        if not is_rnn(node):
            nodes.append(node)
            continue
        rnn = check(node, types, consts, opset)
        prefix = node.name or f"{node.op_type.lower()}{index}"
        em = Emitter(opset, prefix, taken, rnn.dtype, known=consts)
        _expand(em, rnn)
        nodes.extend(em.nodes)
        model.graph.initializer.extend(em.inits)
        steps += rnn.seq * len(rnn.directions)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    added = len(nodes) - (len(proto.graph.node) - count)
    return model, f"expanded {count} LSTM/GRU node(s) into {added} nodes ({steps} steps)"


def check(node, types: dict, consts: dict, opset: int) -> Rnn:
    """The node's parameters, or a one-line :class:`FluidMLError` naming what is unsupported."""
    import onnx

    kind, where = node.op_type, describe(node)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    problems, dirs = _attribute_problems(kind, attrs, ins, opset)
    elem, dims = types.get(ins[0], (None, None))
    if not dims or len(dims) != 3 or elem is None:
        shape_error = (f"the shape of X '{ins[0]}' is unknown; LSTM/GRU are expanded for a "
                       "static [seq_length, batch, input_size] (fix the inputs with "
                       f"{option('input_shapes')})")
    elif dims[0] is None or dims[1] is None:
        what = "sequence length" if dims[0] is None else "batch size"
        shape_error = (f"the {what} of X '{ins[0]}' is not static (shape {_fmt(dims)}); "
                       "LSTM/GRU are unrolled over a static sequence: fix it with "
                       f"{option('input_shapes')}")
    else:
        shape_error = None
        if ins[4]:
            problems += _sequence_lens_problems(ins[4], consts.get(ins[4]), dims[0], dims[1])
    if problems:
        raise FluidMLError(f"{kind} {where}: unsupported: {'; '.join(problems)}")
    if shape_error:
        raise FluidMLError(f"{kind} {where}: {shape_error}")
    hidden = attrs.get("hidden_size")
    if hidden is None:
        r_dims = types.get(ins[2], (None, None))[1]
        hidden = r_dims[-1] if r_dims and r_dims[-1] is not None else None
        if hidden is None:
            raise FluidMLError(f"{kind} {where}: no hidden_size attribute and R's shape unknown")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    return Rnn(kind, dims[0], dims[1], int(hidden), dirs, dtype,
               int(attrs.get("linear_before_reset", 0)) if kind == "GRU" else 0,
               ins[0], ins[1], ins[2], ins[3], ins[5], ins[6] if kind == "LSTM" else "",
               outs[0], outs[1], outs[2] if kind == "LSTM" else "")


def _attribute_problems(kind: str, attrs: dict, ins: list, opset: int):
    """What the node uses that the expansion does not support, and its directions."""
    problems = []
    if opset < 7:
        problems.append(f"opset {opset} (need >= 7)")
    if kind == "LSTM" and ins[7]:
        problems.append(f"peepholes (input P '{ins[7]}')")
    if attrs.get("layout", 0) != 0:
        problems.append(f"layout={attrs['layout']} (batch-major; only layout=0)")
    if "clip" in attrs:
        problems.append(f"clip={attrs['clip']:g}")
    if kind == "LSTM" and attrs.get("input_forget", 0) != 0:
        problems.append(f"input_forget={attrs['input_forget']}")
    direction = _text(attrs.get("direction", "forward"))
    if direction not in _DIRECTIONS:
        problems.append(f"direction={direction!r}")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    acts = [_text(a) for a in attrs.get("activations", [])]
    if acts and [a.lower() for a in acts] != _DEFAULT_ACTIVATIONS[kind] * len(dirs):
        default = ",".join(a.capitalize() for a in _DEFAULT_ACTIVATIONS[kind])
        problems.append(f"activations={','.join(acts)} (only the default {default})")
    return problems, dirs


def _sequence_lens_problems(name: str, lens, seq: int, batch: int) -> list:
    if lens is None:
        full = [seq] * batch
        return [f"sequence_lens '{name}' is a run-time input (if every sequence has the full "
                f"length {seq}, freeze it: {values_example(name, full)})"]
    if np.any(np.asarray(lens) != seq):
        return [f"sequence_lens={np.asarray(lens).tolist()} (only sequences of the full "
                f"length {seq})"]
    return []


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fmt(dims) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


# ---- expansion ---------------------------------------------------------------------------------
# Per-direction tensors keep a leading axis of 1 (W [1, g*h, input], states [1, batch, h], ...):
# Slice then needs no Squeeze, Y_h/Y_c pieces are already in shape, and MatMul broadcasts.
def _expand(em: Emitter, rnn: Rnn) -> None:
    per_dir = [_direction(em, rnn, d, name) for d, name in enumerate(rnn.directions)]
    if rnn.y:
        step = em.ints([1, 1, rnn.batch, rnn.hidden])
        by_dir = [em.concat([em.op("Reshape", [hs[t], step], f"d{d}/t{t}/y")
                             for t in range(rnn.seq)], 0, f"d{d}/y")
                  for d, (hs, _, _) in enumerate(per_dir)]
        em.concat(by_dir, 1, "y", out=rnn.y)  # [seq, directions, batch, h]
    if rnn.y_h:
        em.concat([last_h for _, last_h, _ in per_dir], 0, "y_h", out=rnn.y_h)
    if rnn.y_c:
        em.concat([last_c for _, _, last_c in per_dir], 0, "y_c", out=rnn.y_c)


def _direction(em: Emitter, rnn: Rnn, d: int, direction: str):
    """Emit one direction; returns ({t: H after x_t}, last H, last C), each [1, batch, h]."""
    g, h = _GATES[rnn.kind], rnn.hidden
    p = f"d{d}"
    w_t = em.op("Transpose", [em.slice(rnn.w, 0, d, d + 1, f"{p}/w")], f"{p}/wT",
                perm=[0, 2, 1])  # [1, input, g*h]
    r_t = em.op("Transpose", [em.slice(rnn.r, 0, d, d + 1, f"{p}/r")], f"{p}/rT",
                perm=[0, 2, 1])  # [1, h, g*h]
    xw = em.op("MatMul", [rnn.x, w_t], f"{p}/xw")  # [seq, batch, g*h]
    rec_bias = None
    if rnn.b:
        b = em.slice(rnn.b, 0, d, d + 1, f"{p}/b")  # [1, 2*g*h]
        wb = em.slice(b, 1, 0, g * h, f"{p}/wb")
        rb = em.slice(b, 1, g * h, 2 * g * h, f"{p}/rb")
        if rnn.kind == "GRU" and rnn.linear_before_reset:
            xw = em.op("Add", [xw, wb], f"{p}/xwb")
            rec_bias = rb
        else:
            xw = em.op("Add", [xw, em.op("Add", [wb, rb], f"{p}/bias")], f"{p}/xwb")
    hstate = _initial(em, rnn, rnn.h0, d, "h0")
    cstate = _initial(em, rnn, rnn.c0, d, "c0") if rnn.kind == "LSTM" else None
    order = list(range(rnn.seq))
    if direction == "reverse":
        order.reverse()
    if rnn.kind == "GRU" and not rnn.linear_before_reset:
        r_t = (em.slice(r_t, 2, 0, 2 * h, f"{p}/rT_zr"),
               em.slice(r_t, 2, 2 * h, 3 * h, f"{p}/rT_h"))
    hs = {}
    for t in order:
        x_t = em.slice(xw, 0, t, t + 1, f"{p}/t{t}/x")  # [1, batch, g*h]
        q = f"{p}/t{t}"
        if rnn.kind == "LSTM":
            hstate, cstate = _lstm_step(em, q, h, x_t, hstate, cstate, r_t)
        else:
            hstate = _gru_step(em, q, h, x_t, hstate, r_t, rnn.linear_before_reset, rec_bias)
        hs[t] = hstate
    return hs, hstate, cstate


def _initial(em: Emitter, rnn: Rnn, name: str, d: int, hint: str) -> str:
    if name:
        return em.slice(name, 0, d, d + 1, f"d{d}/{hint}")  # [1, batch, h]
    return em.const(np.zeros((1, rnn.batch, rnn.hidden), rnn.dtype), "zeros")


def _lstm_step(em: Emitter, q: str, h: int, x_t, hstate, cstate, r_t):
    gates = em.op("Add", [x_t, em.op("MatMul", [hstate, r_t], f"{q}/hr")], f"{q}/g")
    s = em.op("Sigmoid", [em.slice(gates, 2, 0, 3 * h, f"{q}/g_iof")], f"{q}/iof")
    i = em.slice(s, 2, 0, h, f"{q}/i")
    o = em.slice(s, 2, h, 2 * h, f"{q}/o")
    f = em.slice(s, 2, 2 * h, 3 * h, f"{q}/f")
    c_new = em.op("Tanh", [em.slice(gates, 2, 3 * h, 4 * h, f"{q}/g_c")], f"{q}/cc")
    cstate = em.op("Add", [em.op("Mul", [f, cstate], f"{q}/fc"),
                           em.op("Mul", [i, c_new], f"{q}/ic")], f"{q}/c")
    hstate = em.op("Mul", [o, em.op("Tanh", [cstate], f"{q}/tc")], f"{q}/h")
    return hstate, cstate


def _gru_step(em: Emitter, q: str, h: int, x_t, hstate, r_t, linear_before_reset, rec_bias):
    x_zr = em.slice(x_t, 2, 0, 2 * h, f"{q}/x_zr")
    x_h = em.slice(x_t, 2, 2 * h, 3 * h, f"{q}/x_h")
    if linear_before_reset:
        hr = em.op("MatMul", [hstate, r_t], f"{q}/hr")  # [1, batch, 3h]
        if rec_bias is not None:
            hr = em.op("Add", [hr, rec_bias], f"{q}/hrb")
        zr = em.op("Sigmoid", [em.op("Add", [x_zr, em.slice(hr, 2, 0, 2 * h, f"{q}/hr_zr")],
                                     f"{q}/g_zr")], f"{q}/zr")
        reset = em.slice(zr, 2, h, 2 * h, f"{q}/r")
        inner = em.op("Mul", [reset, em.slice(hr, 2, 2 * h, 3 * h, f"{q}/hr_h")], f"{q}/rhr")
    else:
        r_zr, r_h = r_t
        zr = em.op("Sigmoid", [em.op("Add", [x_zr, em.op("MatMul", [hstate, r_zr], f"{q}/hr_zr")],
                                     f"{q}/g_zr")], f"{q}/zr")
        reset = em.slice(zr, 2, h, 2 * h, f"{q}/r")
        inner = em.op("MatMul", [em.op("Mul", [reset, hstate], f"{q}/rh"), r_h], f"{q}/rhr")
    z = em.slice(zr, 2, 0, h, f"{q}/z")
    cand = em.op("Tanh", [em.op("Add", [x_h, inner], f"{q}/g_h")], f"{q}/hh")
    diff = em.op("Sub", [hstate, cand], f"{q}/dh")
    return em.op("Add", [cand, em.op("Mul", [z, diff], f"{q}/zdh")], f"{q}/h")
