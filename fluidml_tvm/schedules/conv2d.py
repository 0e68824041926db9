"""conv2d rule (placeholder until the direct-convolution schedule lands): not matched."""

from __future__ import annotations


def schedule_conv2d(func, cpu):
    return None, "conv2d rule not implemented"
