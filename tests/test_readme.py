"""The README's code runs as written: the 'inside your own TVM flow' snippet in a fresh process
(where only `import tvm`, through the installed package's tvm.backends entry point, registers the
fluidml.* PassContext keys)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from needs import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippet(heading: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_tvm_flow_snippet_runs_in_a_fresh_process(tmp_path):
    from fluidml_tvm import config_keys

    require(None if config_keys.register() else "no C++ compiler for tvm_ffi.cpp.load_inline",
            "a C++ compiler")
    code = _snippet("Inside your own TVM flow")
    env = dict(os.environ, FLUIDML_TVM_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "(2, 4)"
