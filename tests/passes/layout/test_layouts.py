"""The layout algebra (passes/layout/layouts.py)."""

from __future__ import annotations

import itertools

from fluidml_tvm.passes.layout.layouts import (
    NCHW,
    NHWC,
    blocked,
    blocked_shape,
    compose,
    default_of,
    identity,
    inverse,
    is_blocked,
    layout_name,
    moves_data,
    phys_shape,
)


def test_moves_data_ignores_unit_dims():
    assert not moves_data((0, 2, 1), (4, 1, 5))  # only a size-1 dim moves: a reshape
    assert moves_data((0, 2, 1), (4, 3, 5))


def test_inverse_and_compose_round_trip():
    for perm in itertools.permutations(range(4)):
        assert compose(perm, inverse(perm)) == identity(4)
        assert compose(inverse(perm), perm) == identity(4)
        assert phys_shape(phys_shape((2, 3, 5, 7), perm), inverse(perm)) == (2, 3, 5, 7)


def test_blocked_layout_is_not_a_permutation():
    lay = blocked(16)
    assert is_blocked(lay) and not is_blocked(NHWC) and not is_blocked((0, 1, 2, 3))
    assert default_of(lay) == identity(4)
    assert blocked_shape((1, 32, 7, 9), lay) == (1, 2, 7, 9, 16)
    assert blocked_shape((1, 32, 7, 9), NHWC) == (1, 7, 9, 32)
    assert [layout_name(x) for x in (NCHW, NHWC, lay)] == ["NCHW", "NHWC", "NCHW16c"]
