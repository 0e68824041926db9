"""FluidML Relax passes.

Stages with several parts are packages with one front door each: :mod:`.layout` (``stage.py``)
and :mod:`.memory` (``stage.py``). Single passes are one file each: :mod:`.split_projection`,
:mod:`.residual_order`, :mod:`.fuse_conv_pool`, :mod:`.external_weights`.
"""
