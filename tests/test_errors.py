"""One-line user errors (errors.py)."""

from fluidml_tvm.errors import FluidMLError, names


def test_names_keep_lists_short():
    assert names(["a", "b"]) == "a, b"
    assert names(range(12), limit=3) == "0, 1, 2, ... (9 more)"
    assert FluidMLError.exit_code == 2
