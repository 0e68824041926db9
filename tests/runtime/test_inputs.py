"""runtime/inputs.py: a model's inputs completed and checked alike for the Python API and the
command line (missing ones filled with a notice, same-kind casts with a notice, everything else
a one-line error), in the caller's words."""

import numpy as np
import pytest

from fluidml_tvm.errors import FluidMLError, cli_api
from fluidml_tvm.runtime.inputs import complete, fill

SPECS = [{"name": "x", "shape": [2, 3], "dtype": "float32"},
         {"name": "ids", "shape": [4], "dtype": "int64"},
         {"name": "flag", "shape": [1], "dtype": "bool"}]


def _complete(inputs, fill_mode="random"):
    said = []
    out = complete(SPECS, inputs, fill_mode, said.append)
    return out, said


def _error(inputs, *words, fill_mode="random"):
    with pytest.raises(FluidMLError) as info:
        complete(SPECS, inputs, fill_mode, lambda m: None)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_everything_given_in_the_right_dtypes_says_nothing():
    given = fill(SPECS, "ones")
    out, said = _complete(given)
    assert said == [] and list(out) == ["x", "ids", "flag"]
    assert all(out[k] is given[k] for k in given)


@pytest.mark.parametrize("cli, none, some", [
    (False, "no inputs given: input(s) x, ids, flag: filled with zeros values "
            "(fill_mode='zeros')",
     "input(s) ids, flag not in the inputs: filled with zeros values (fill_mode='zeros')"),
    (True, "no --inputs given: input(s) x, ids, flag: filled with zeros values "
           "(--fill-mode zeros)",
     "input(s) ids, flag not in --inputs: filled with zeros values (--fill-mode zeros)"),
])
def test_missing_inputs_are_filled_with_a_notice_in_the_callers_words(cli, none, some):
    def run(inputs):
        if cli:
            with cli_api():
                return _complete(inputs, "zeros")
        return _complete(inputs, "zeros")

    out, said = run(None)
    assert said == [none]
    assert out["ids"].dtype == np.int64 and not out["x"].any()
    x = np.ones((2, 3), "float32")
    out, said = run({"x": x})
    assert said == [some] and out["x"] is x and out["flag"].dtype == bool
    out, said = run([x])  # positional, in input order
    assert said == [some]


def test_unknown_names_and_wrong_shapes_are_errors():
    msg = _error({"x": np.ones((2, 3), "float32"), "z": 1}, "z", "does not take",
                 "x, ids, flag")
    assert msg.startswith("the inputs name(s) z")
    with cli_api():
        assert _error({"z": 1}, "z").startswith("--inputs name(s) z")
    _error({"x": np.ones((3, 2), "float32")}, "input x has shape [3, 2]", "compiled for [2, 3]")
    _error([np.ones((2, 3), "float32")] * 4, "4 inputs given, the model takes 3")
    _error(None, "fill_mode must be random, zeros or ones", fill_mode="nan")
    with cli_api():
        _error(None, "--fill-mode must be random, zeros or ones", fill_mode="nan")


@pytest.mark.parametrize("name, value, said", [
    ("x", np.ones((2, 3), "float64"), "input x is float64, the model takes float32: cast"),
    ("x", np.ones((2, 3), "float16"), "input x is float16, the model takes float32: cast"),
    ("ids", np.arange(4, dtype="int32"), "input ids is int32, the model takes int64: cast"),
    ("ids", np.arange(4, dtype="uint8"), "input ids is uint8, the model takes int64: cast"),
])
def test_a_cast_within_a_kind_is_done_with_a_notice(name, value, said):
    out, notices = _complete({**fill(SPECS, "ones"), name: value})
    assert notices == [said]
    assert out[name].dtype == np.dtype(next(s["dtype"] for s in SPECS if s["name"] == name))
    np.testing.assert_array_equal(out[name], value)


@pytest.mark.parametrize("name, value, words", [
    ("ids", np.array([0.0, 1.5, 2.0, 3.0]), ["input ids is float64, the model takes int64",
                                             "float values are not cast to integer implicitly"]),
    ("flag", np.array([1]), ["input flag is int64, the model takes bool"]),
    ("x", np.ones((2, 3), "int64"), ["input x is int64, the model takes float32"]),
])
def test_a_cast_across_kinds_is_an_error(name, value, words):
    _error({**fill(SPECS, "ones"), name: value}, *words)


def test_an_integer_cast_that_changes_a_value_is_an_error():
    specs = [{"name": "n", "shape": [2], "dtype": "int32"}]
    out = complete(specs, {"n": np.array([1, 2], "int64")}, "random", lambda m: None)
    assert out["n"].dtype == np.int32
    with pytest.raises(FluidMLError, match="some int64 values do not fit in int32"):
        complete(specs, {"n": np.array([1, 2**40], "int64")}, "random", lambda m: None)
