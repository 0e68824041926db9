"""ONNX's own node conformance cases for LSTM and GRU, through fluidml (fluidml=1, analytic cost),
against the expected outputs that ship with them. Those using what the expansion does not
support must fail with the one-line error."""

import functools
import warnings

import numpy as np
import pytest

import fluidml_tvm
from fluidml_tvm.errors import FluidMLError

SUPPORTED = [
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length", "test_gru_reverse",
    "test_gru_bidirectional", "test_lstm_defaults", "test_lstm_with_initial_bias",
    "test_lstm_reverse", "test_lstm_bidirectional",
]
UNSUPPORTED = {
    "test_gru_batchwise": "GRU unnamed node (output 'Y'): unsupported: layout=1",
    "test_lstm_batchwise": "LSTM unnamed node (output 'Y'): unsupported: layout=1",
    "test_lstm_with_peepholes": "LSTM unnamed node (output 'Y_h'): unsupported: peepholes",
}


@functools.cache
def _cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return {c.name: c for c in cases if c.name.startswith(("test_lstm_", "test_gru_"))}


def _compile_and_run(case):
    inputs, expected = case.data_sets[0]
    names = [i.name for i in case.model.graph.input]
    compiled = fluidml_tvm.compile(case.model, pass_config=["fluidml=1", "fluidml.cost=analytic"])
    return list(compiled.load().run(dict(zip(names, inputs))).values()), expected


def test_the_case_list_is_complete():
    """A new onnx release with new LSTM/GRU cases must show up here, not go unnoticed."""
    assert sorted(_cases()) == sorted(SUPPORTED + list(UNSUPPORTED))


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_case_matches_expected_outputs(name):
    got, expected = _compile_and_run(_cases()[name])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_case_fails_in_one_line(name):
    with pytest.raises(FluidMLError) as err:
        _compile_and_run(_cases()[name])
    msg = str(err.value)
    assert msg.startswith(UNSUPPORTED[name]) and "\n" not in msg, msg
