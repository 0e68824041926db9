"""A model zoo of ONNX files with seeded random weights, built without torch and without downloads.

Every model is written node by node with :mod:`onnx.helper` (opset 17), in the shape that real
exporters (``torch.onnx``) emit, so that the compiler sees the same patterns it will meet in the
wild: BERT's attention as ``MatMul+Add -> Reshape [B,S,H,D] -> Transpose``, GELU as the ``Erf``
formula, ReLU6 as ``Clip``, ``Linear`` as ``Gemm(transB=1)``.

=============  ===================================================================================
name           model
=============  ===================================================================================
``bert``       BERT encoder (base: 12 layers, hidden 768, 12 heads, FFN 3072, seq 128, vocab 30522)
``gpt-neox``   GPT-NeoX decoder (small = Pythia-70M: 6 layers, hidden 512, 8 heads, seq 128)
``vgg11``      VGG-11 at 224x224 (classifier 25088 -> 4096 -> 4096 -> 1000)
``vgg16``      VGG-16 at 224x224
``resnet50``   ResNet-50 v1.5 at 224x224, bottleneck blocks, explicit ``BatchNormalization``
``mobilenet``  MobileNetV2 at 224x224, depthwise convs (``group=C``), ReLU6 as ``Clip``
=============  ===================================================================================

Each has ``size="full"`` (the real architecture, whose :func:`param_count` matches the published
one) and ``size="tiny"`` (same graph structure, narrow and short: runs in milliseconds, for tests).
``bert`` and ``gpt-neox`` also take ``dynamic=True``: batch and sequence become symbolic dims and
every Reshape target is computed at run time with ``Shape -> Gather -> Unsqueeze -> Concat``, as
torch exports with ``dynamic_axes`` do; they test shape folding (stock TVM 0.27's importer folds
these chains itself when it is given the input shapes).

Batch normalization is kept as ``BatchNormalization`` nodes (with random running statistics)
instead of being folded into the convolution. Exporters differ here (``torch.onnx`` in eval mode
usually folds it, ``training=TrainingMode.PRESERVE`` keeps it); explicit nodes leave the folding to
the compiler under test. The last BN of each ResNet bottleneck has a small scale (0.2) so that the
residual stream stays O(1) without trained statistics.

Weights are drawn from ``numpy.random.default_rng(seed)`` with the usual initialisation scales
(BERT/GPT: N(0, 0.02); convolutions and FC layers: He normal), so activations stay O(1) through
the whole network and outputs can be compared at tight tolerances.

Examples
--------
>>> from fluidml_tvm.tools import zoo
>>> model = zoo.build("bert", size="tiny", seed=0)
>>> feeds = zoo.random_inputs(model, seed=0)
>>> model, description = zoo.resolve("zoo:vgg11:tiny")
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

from .convnets import CNN_BUILDERS, CNN_CONFIGS
from .graph import Graph
from .transformers import BERT_CONFIGS, NEOX_CONFIGS, build_bert, build_gpt_neox

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; every ONNX Runtime >= 1.10 loads it
_PROTOBUF_LIMIT = 2**31 - 1

MODELS: dict[str, str] = {
    "bert": "BERT encoder: token+position+segment embeddings, LayerNorm, multi-head attention "
    "(exporter Reshape/Transpose pattern), Erf GELU FFN, pooler",
    "gpt-neox": "GPT-NeoX decoder: rotary embeddings on a fraction of each head, parallel "
    "attention + MLP residual, causal mask, Erf GELU, LM head",
    "vgg11": "VGG-11: 8 conv3x3+ReLU, 5 MaxPool, 3 FC layers (4096 wide) with ReLU",
    "vgg16": "VGG-16: 13 conv3x3+ReLU, 5 MaxPool, 3 FC layers (4096 wide) with ReLU",
    "resnet50": "ResNet-50 v1.5: bottleneck blocks [3,4,6,3], BatchNormalization nodes, "
    "global average pool, FC",
    "mobilenet": "MobileNetV2: inverted residual blocks, depthwise conv (group=C) + pointwise, "
    "BatchNormalization, ReLU6 as Clip",
}
SIZES = ("tiny", "full")
DYNAMIC_MODELS = ("bert", "gpt-neox")
_ALIASES = {"gpt_neox": "gpt-neox", "gptneox": "gpt-neox", "mobilenetv2": "mobilenet",
            "mobilenet_v2": "mobilenet", "resnet": "resnet50"}

_META_NAME = "fluidml.zoo.name"
_META_SIZE = "fluidml.zoo.size"
_META_RANGE = "fluidml.zoo.range."  # + input name -> "low,high" for integer inputs


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    return key


def _check_args(name: str, size: str, dynamic: bool) -> str:
    name = _canonical(name)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {SIZES}")
    if dynamic and name not in DYNAMIC_MODELS:
        raise ValueError(f"dynamic=True is only available for {DYNAMIC_MODELS}, not {name!r}")
    return name


def _run_builder(g: Graph, name: str, size: str, dynamic: bool):
    if name == "bert":
        return build_bert(g, BERT_CONFIGS[size], dynamic)
    if name == "gpt-neox":
        return build_gpt_neox(g, NEOX_CONFIGS[size], dynamic)
    return CNN_BUILDERS[name](g, size)


def describe(name: str, size: str = "tiny", dynamic: bool = False) -> str:
    """A one-line description of a configuration, with its sizes and parameter count."""
    name = _check_args(name, size, dynamic)
    if name in ("bert", "gpt-neox"):
        c = (BERT_CONFIGS if name == "bert" else NEOX_CONFIGS)[size]
        shape = "[batch, sequence]" if dynamic else f"[1, {c.seq}]"
        detail = (f"{c.layers} layers, hidden {c.hidden}, {c.heads} heads, FFN {c.intermediate}, "
                  f"vocab {c.vocab}, input {shape}")
    else:
        hw = CNN_CONFIGS[size][0]
        detail = f"input [1, 3, {hw}, {hw}], {CNN_CONFIGS[size][3]} classes"
    params = param_count(name, size)
    return f"{name} ({size}{', dynamic' if dynamic else ''}): {detail}, {params / 1e6:.2f}M params"


def param_count(name: str, size: str = "full") -> int:
    """Number of trainable parameters, counted without generating any weight.

    Constants that are not trainable (BatchNorm running statistics, position ids, rotary tables,
    masks, shapes) are not counted, so the numbers match the published ones (torchvision,
    Hugging Face): BERT-base 109,482,240 (with pooler), Pythia-70M 70,426,624, VGG-11 132,863,336,
    VGG-16 138,357,544, ResNet-50 25,557,032, MobileNetV2 3,504,872.
    """
    name = _check_args(name, size, False)
    g = Graph(0, dry=True)
    _run_builder(g, name, size, False)
    return g.params


def build(name: str, size: str = "tiny", seed: int = 0, dynamic: bool = False) -> onnx.ModelProto:
    """Build a zoo model as an ``onnx.ModelProto`` with seeded random weights.

    Parameters
    ----------
    name
        One of :data:`MODELS` (``bert``, ``gpt-neox``, ``vgg11``, ``vgg16``, ``resnet50``,
        ``mobilenet``).
    size
        ``"tiny"`` (for tests) or ``"full"`` (the real architecture).
    seed
        Seed of the weight generator; equal seeds give byte-identical models.
    dynamic
        ``bert`` and ``gpt-neox`` only: symbolic ``batch`` and ``sequence`` dims, Reshape targets
        computed at run time (``Shape -> Gather -> Unsqueeze -> Concat``).

    Returns
    -------
    onnx.ModelProto
        Opset 17, IR version 8, with ``metadata_props`` naming the model and the valid range of
        each integer input (read by :func:`random_inputs`).
    """
    name = _check_args(name, size, dynamic)
    g = Graph(seed)
    inputs, outputs, ranges = _run_builder(g, name, size, dynamic)
    graph = helper.make_graph(g.nodes, f"{name}_{size}", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fluidml_tvm.zoo", ir_version=IR_VERSION)
    model.doc_string = describe(name, size, dynamic)
    meta = {_META_NAME: name, _META_SIZE: size, "fluidml.zoo.seed": str(seed),
            "fluidml.zoo.dynamic": str(int(dynamic))}
    meta.update({_META_RANGE + k: f"{lo},{hi}" for k, (lo, hi) in ranges.items()})
    helper.set_model_props(model, meta)
    return model


def save(name: str, path: str, size: str = "tiny", seed: int = 0, dynamic: bool = False) -> str:
    """Build a zoo model and write it to ``path``; returns ``path``.

    One self-contained file: the largest model here (VGG-16, ~553 MB) is far below protobuf's 2 GB
    limit. Should a model ever exceed it, the weights go to ``path + ".data"`` (external data).
    """
    model = build(name, size=size, seed=seed, dynamic=dynamic)
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(path) + ".data")
    else:
        onnx.save(model, path)
    return path


def _graph_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _static_shape(inp: onnx.ValueInfoProto) -> list[int]:
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            raise ValueError(f"input {inp.name!r} has a symbolic dim {d.dim_param or '?'!r}; "
                             "give its shape explicitly")
        dims.append(d.dim_value)
    return dims


def input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """``{input name: shape}`` of a model whose inputs have static shapes.

    Raises
    ------
    ValueError
        If an input has a symbolic (``dim_param``) or unknown dim; pass shapes explicitly then.
    """
    return {inp.name: _static_shape(inp) for inp in _graph_inputs(model)}


def random_inputs(model_or_name, seed: int = 0, size: str = "tiny",
                  shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for a model (a ``ModelProto`` or a zoo name, built at ``size``).

    Floating inputs are standard normal. Integer inputs are uniform in the range the zoo recorded
    in the model's metadata (token ids below the vocabulary size, token types 0/1), or in [0, 2)
    for a model from elsewhere. An input named ``attention_mask`` is all ones except the last
    quarter of each sequence (padding), so masking is exercised.

    Parameters
    ----------
    shapes
        Shapes of inputs with symbolic dims (required for ``dynamic=True`` models), e.g.
        ``{"input_ids": [1, 24], "attention_mask": [1, 24], "token_type_ids": [1, 24]}``.
    """
    if isinstance(model_or_name, str):  # the inputs of a dry build: no weights generated
        g = Graph(0, dry=True)
        inputs, _, ranges = _run_builder(g, _check_args(model_or_name, size, False), size, False)
        props = {_META_RANGE + k: f"{lo},{hi}" for k, (lo, hi) in ranges.items()}
    else:
        inputs = _graph_inputs(model_or_name)
        props = {p.key: p.value for p in model_or_name.metadata_props}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in inputs:
        if shapes and inp.name in shapes:
            shape = [int(s) for s in shapes[inp.name]]
        else:
            shape = _static_shape(inp)
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif inp.name == "attention_mask":
            mask = np.ones(shape, dtype=dtype)
            if shape and shape[-1] >= 4:
                mask[..., shape[-1] - shape[-1] // 4:] = 0
            feeds[inp.name] = mask
        else:
            lo, hi = (int(v) for v in props.get(_META_RANGE + inp.name, "0,2").split(","))
            feeds[inp.name] = rng.integers(lo, hi, size=shape).astype(dtype)
    return feeds


def resolve(spec: str, seed: int = 0):
    """Resolve a model spec ``zoo:NAME[:SIZE][:dynamic]`` to ``(onnx.ModelProto, description)``.

    ``SIZE`` defaults to ``full`` (the benchmark's case); ``zoo:bert:tiny`` is the test config.

    Examples
    --------
    >>> model, desc = resolve("zoo:gpt-neox:tiny")
    """
    if not spec.startswith("zoo:"):
        raise ValueError(f"not a zoo spec: {spec!r} (expected zoo:NAME[:tiny|full][:dynamic])")
    parts = spec[4:].split(":")
    name, size, dynamic = parts[0], "full", False
    for p in parts[1:]:
        if p in SIZES:
            size = p
        elif p == "dynamic":
            dynamic = True
        else:
            raise ValueError(f"bad zoo spec {spec!r}: unknown option {p!r}")
    model = build(name, size=size, seed=seed, dynamic=dynamic)
    return model, model.doc_string


def is_zoo_spec(spec) -> bool:
    """Whether ``spec`` is a ``zoo:...`` string (as opposed to a path or a ModelProto)."""
    return isinstance(spec, str) and spec.startswith("zoo:")


__all__ = [
    "DYNAMIC_MODELS",
    "MODELS",
    "SIZES",
    "build",
    "describe",
    "input_shapes",
    "is_zoo_spec",
    "param_count",
    "random_inputs",
    "resolve",
    "save",
]
