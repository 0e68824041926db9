"""VGG-11/16, ResNet-50 v1.5 and MobileNetV2 as torchvision exports them, with random weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto

from .graph import Graph, value_info

_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}
# image size, channel divisor, FC width, classes
CNN_CONFIGS = {"full": (224, 1, 4096, 1000), "tiny": (32, 16, 64, 10)}


def _image_input(size: str):
    hw = CNN_CONFIGS[size][0]
    return [value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])]


def _classifier_output(g: Graph, classes: int):
    g.rename_last("output")
    return [value_info("output", TensorProto.FLOAT, [1, classes])]


def _vgg(name: str):
    def build(g: Graph, size: str):
        hw, div, fc, classes = CNN_CONFIGS[size]
        x, c = "input", 3
        for i, v in enumerate(_VGG_CFG[name]):
            if v == "M":
                x = g.op("MaxPool", [x], name=f"features.{i}/MaxPool", kernel_shape=[2, 2],
                         strides=[2, 2])
                continue
            x = g.conv(x, c, v // div, 3, f"features.{i}")
            x = g.op("Relu", [x], name=f"features.{i}/Relu")
            c = v // div
        # torchvision's AdaptiveAvgPool2d((7, 7)) is the identity at 224x224 and is folded away
        x = g.op("Flatten", [x], name="Flatten", axis=1)
        spatial = hw // 32
        x = g.gemm(x, c * spatial * spatial, fc, "classifier.0")
        x = g.op("Relu", [x], name="classifier.1/Relu")
        x = g.gemm(x, fc, fc, "classifier.3")
        x = g.op("Relu", [x], name="classifier.4/Relu")
        g.gemm(x, fc, classes, "classifier.6")
        return _image_input(size), _classifier_output(g, classes), {}

    return build


def _conv_bn(g: Graph, x: str, c_in: int, c_out: int, k: int, prefix: str, stride: int = 1,
             group: int = 1, act: str | None = "relu", gamma: float = 1.0) -> str:
    x = g.conv(x, c_in, c_out, k, f"{prefix}.conv", stride=stride, group=group, bias=False)
    x = g.batch_norm(x, c_out, f"{prefix}.bn", gamma)
    if act == "relu":
        x = g.op("Relu", [x], name=f"{prefix}/Relu")
    elif act == "relu6":
        x = g.op("Clip", [x, g.const(0.0, np.float32), g.const(6.0, np.float32)],
                 name=f"{prefix}/Clip")
    return x


def _resnet50(g: Graph, size: str):
    _, div, _, classes = CNN_CONFIGS[size]
    # tiny: one identity-shortcut block and one strided downsample block, as in every stage
    blocks = [3, 4, 6, 3] if size == "full" else [2, 1]
    width = 64 // div
    x = _conv_bn(g, "input", 3, width, 7, "stem", stride=2)
    x = g.op("MaxPool", [x], name="maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    c_in = width
    for li, n in enumerate(blocks):
        planes = (64 << li) // div
        for bi in range(n):
            pre = f"layer{li + 1}.{bi}"
            stride = 2 if (bi == 0 and li > 0) else 1
            y = _conv_bn(g, x, c_in, planes, 1, f"{pre}.1")
            y = _conv_bn(g, y, planes, planes, 3, f"{pre}.2", stride=stride)
            # a small last-BN scale keeps the residual stream O(1) through 16 blocks (the
            # random running statistics do not normalise like trained ones would)
            y = _conv_bn(g, y, planes, planes * 4, 1, f"{pre}.3", act=None, gamma=0.2)
            if bi == 0:
                x = _conv_bn(g, x, c_in, planes * 4, 1, f"{pre}.downsample", stride=stride,
                             act=None)
            x = g.op("Relu", [g.op("Add", [y, x], name=f"{pre}/Add")], name=f"{pre}/Relu")
            c_in = planes * 4
    x = g.op("GlobalAveragePool", [x], name="avgpool/GlobalAveragePool")
    x = g.op("Flatten", [x], name="Flatten", axis=1)
    g.gemm(x, c_in, classes, "fc")
    return _image_input(size), _classifier_output(g, classes), {}


def _mobilenet(g: Graph, size: str):
    classes = CNN_CONFIGS[size][3]
    # (expansion t, channels c, repeats n, stride s) as in the MobileNetV2 paper
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    width = 1.0
    if size == "tiny":  # a quarter of the width, first three stages: every kind of block once
        width, cfg = 0.25, [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2)]

    def ch(c: float) -> int:  # torchvision's _make_divisible(c * width, 8)
        c = c * width
        v = max(8, int(c + 4) // 8 * 8)
        return v + 8 if v < 0.9 * c else v

    c_in = ch(32)
    x = _conv_bn(g, "input", 3, c_in, 3, "features.0", stride=2, act="relu6")
    idx = 1
    for t, c, n, s in cfg:
        c_out = ch(c)
        for r in range(n):
            pre = f"features.{idx}"
            hidden = c_in * t
            y = x
            if t != 1:
                y = _conv_bn(g, y, c_in, hidden, 1, f"{pre}.expand", act="relu6")
            y = _conv_bn(g, y, hidden, hidden, 3, f"{pre}.dw", stride=s if r == 0 else 1,
                         group=hidden, act="relu6")
            y = _conv_bn(g, y, hidden, c_out, 1, f"{pre}.project", act=None)
            if (s if r == 0 else 1) == 1 and c_in == c_out:  # torchvision's use_res_connect
                y = g.op("Add", [x, y], name=f"{pre}/Add")
            x, c_in = y, c_out
            idx += 1
    last = 1280 if size == "full" else ch(1280)
    x = _conv_bn(g, x, c_in, last, 1, f"features.{idx}", act="relu6")
    x = g.op("GlobalAveragePool", [x], name="GlobalAveragePool")
    x = g.op("Flatten", [x], name="Flatten", axis=1)
    g.gemm(x, last, classes, "classifier.1")
    return _image_input(size), _classifier_output(g, classes), {}


CNN_BUILDERS: dict[str, Callable] = {
    "vgg11": _vgg("vgg11"),
    "vgg16": _vgg("vgg16"),
    "resnet50": _resnet50,
    "mobilenet": _mobilenet,
}
