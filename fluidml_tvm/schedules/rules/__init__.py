"""The schedule rules, one operator family per module, each a :class:`.base.Rule`.

:data:`RULES` is the order the stage tries them in; the first that applies to a kernel wins:

1. ``matmul``       (:mod:`.matmul`) - matmul / dense / batch-matmul with prologues and
   epilogues; B packed at compile time when it is a constant.
2. ``conv2d_nchwc`` (:mod:`.conv2d_nchwc`) - a convolution the layout stage put in the blocked
   ``NCHW[b]c`` layout.
3. ``conv_pool``    (:mod:`.conv_pool`) - a convolution fused with its max-pool
   (:mod:`fluidml_tvm.passes.fuse_conv_pool`).
4. ``conv2d_transpose`` (:mod:`.conv_transpose`) - transposed convolutions, by output phase.
5. ``conv2d``       (:mod:`.conv2d`) - direct convolutions (NCHW/NHWC, any stride, any channel
   and column count, grouped ones with their channels split: :mod:`.grouped`, :mod:`.pad`).
6. ``depthwise``    (:mod:`.depthwise`) - depthwise convolutions (``group = C``), any stride;
   switched off by ``fluidml.schedule_off=depthwise``.
7. ``pool``         (:mod:`.pool`) - NCHW window pools with stride 1 or 2 along the rows; switched
   off by ``fluidml.schedule_off=pool``.
8. ``reduction``    (:mod:`.reduction`) - softmax, LayerNorm and any other reduction.
9. ``injective``    (:mod:`.injective`) - everything without a reduction.

The first six measure their candidates (:mod:`..choose`); the last three have one schedule each.
"""

from .base import Context, Rule, Unrelated
from .conv2d import Conv2dRule
from .conv2d_nchwc import NCHWcRule
from .conv_pool import ConvPoolRule
from .conv_transpose import ConvTransposeRule
from .depthwise import DepthwiseRule
from .injective import InjectiveRule
from .matmul import MatmulRule
from .pool import PoolRule
from .reduction import ReductionRule

RULES: tuple[Rule, ...] = (
    MatmulRule(),
    NCHWcRule(),
    ConvPoolRule(),
    ConvTransposeRule(),
    Conv2dRule(),
    DepthwiseRule(),
    PoolRule(),
    ReductionRule(),
    InjectiveRule(),
)

__all__ = ["RULES", "Context", "Rule", "Unrelated"]
