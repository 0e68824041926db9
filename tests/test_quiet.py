"""Compile and run print nothing of TVM's own (issue #15): the README's example, end to end.

Two sources were found and fixed at their cause: ``relax.take``'s legalization warned once per
Gather ("Fast mode segfaults ...", passes/legalize.py), and a library exported after its
executable had run in this process carried an empty memory scope per constant ("Scope Saving",
"Scope Loaded": artifact.CompiledModel.load runs an exported copy).
"""

from __future__ import annotations

import os
import subprocess
import sys


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "fluidml_tvm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_readme_example_prints_no_tvm_warning(tmp_path):
    env = dict(os.environ, FLUIDML_TVM_CACHE=str(tmp_path / "cache"),
               FLUIDML_TVM_LAYOUT_VERIFY="1")  # the user's default: plans timed in-process
    lib = str(tmp_path / "bert_tiny.so")
    comp = _cli("compile", "zoo:bert:tiny", "-o", lib, env=env)
    assert comp.returncode == 0, comp.stderr
    run = _cli("run", lib, "--print-time", "--repeat", "3", env=env)
    assert run.returncode == 0, run.stderr
    for out in (comp.stdout, comp.stderr, run.stdout, run.stderr):
        assert "Warning" not in out and "warning" not in out, out
    assert all(line.startswith("[fluidml-tvm]") for line in comp.stderr.splitlines())
