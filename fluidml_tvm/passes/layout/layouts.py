"""Layouts as data: permutations of a tensor's dims, and the blocked ``NCHW[b]c`` activation layout.

A layout is a permutation ``L`` of a tensor's dims: physical dim ``p`` holds logical dim ``L[p]``
(the identity is the default, row-major layout). ``NCHW[b]c`` (``[N, C/b, H, W, b]``) is not a
permutation; it is written as the 5-tuple ``(0, 1, 2, 3, b)`` (:func:`blocked`, :func:`is_blocked`).
Everything in the layout stage speaks these tuples; this module has no dependencies of its own.
"""

from __future__ import annotations

POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")


def identity(rank: int) -> tuple:
    return tuple(range(rank))


def is_blocked(lay) -> bool:
    """``NCHW[b]c``, written ``(0, 1, 2, 3, b)`` (see :mod:`.layout_conv`)."""
    return lay is not None and len(lay) == 5 and tuple(lay[:4]) == (0, 1, 2, 3)


def default_of(lay) -> tuple:
    """The default layout of the tensor ``lay`` is a layout of."""
    return identity(4) if is_blocked(lay) else identity(len(lay))


def inverse(perm) -> tuple:
    out = [0] * len(perm)
    for p, d in enumerate(perm):
        out[d] = p
    return tuple(out)


def compose(perm, inner) -> tuple:
    """``out[p] = perm[inner[p]]``."""
    return tuple(perm[i] for i in inner)


def moves_data(perm, shape) -> bool:
    """Whether reordering a tensor of ``shape`` by ``perm`` (out dim p = in dim perm[p]) moves
    bytes: false when the non-unit dims keep their relative order (then it is a reshape)."""
    kept = [d for d in perm if shape[d] != 1]
    return kept != sorted(kept)


def phys_shape(shape, perm) -> tuple:
    """The shape a tensor of logical ``shape`` has in layout ``perm``."""
    return tuple(shape[d] for d in perm)


NCHW = (0, 1, 2, 3)


NHWC = (0, 2, 3, 1)


CONV_LAYOUTS = (NCHW, NHWC)  # the permutations; blocked layouts: is_blocked()


_NAMES = {NCHW: "NCHW", NHWC: "NHWC"}


def blocked(b: int) -> tuple:
    """The ``NCHW[b]c`` layout of a 4-d activation."""
    return (0, 1, 2, 3, int(b))


def blocked_shape(shape, lay) -> tuple:
    """The physical shape of a 4-d tensor held in ``lay`` (blocked or a permutation)."""
    if is_blocked(lay):
        b = lay[4]
        return (shape[0], shape[1] // b, shape[2], shape[3], b)
    return phys_shape(shape, lay)


def to_blocked(b: int):
    """Index map NCHW -> NCHW[b]c (for ``relax.op.layout_transform``)."""
    return lambda n, c, h, w: (n, c // b, h, w, c % b)


def from_blocked(b: int):
    """Index map NCHW[b]c -> NCHW."""
    return lambda n, co, h, w, ci: (n, co * b + ci, h, w)


def layout_name(lay) -> str:
    if is_blocked(lay):
        return f"NCHW{lay[4]}c"
    return _NAMES[tuple(lay)]
