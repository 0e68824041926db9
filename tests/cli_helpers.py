"""Shared by the command-line tests (test_cli.py, test_cli_tuning.py): :func:`run_cli` runs
``fluidml-tvm`` in this process; :func:`save_mlp` writes the small MLP they compile."""

from __future__ import annotations

import onnx
from onnx_models import mlp

from fluidml_tvm import cli


def run_cli(args, capsys):
    """``(exit code, stdout, stderr)`` of ``fluidml-tvm ARGS``."""
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def save_mlp(tmp_path_factory):
    """The MLP of :func:`onnx_models.mlp` saved as an ONNX file; its path."""
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(mlp(), str(path))
    return path
