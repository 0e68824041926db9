import os
import sys

import pytest

# The shared model builders (onnx_models.py, light_models.py, ...) live beside this file; with
# --import-mode=importlib (pytest.ini) nothing puts this directory on sys.path for us.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Tests measure nothing, but the runtime must use the same thread count everywhere.
os.environ.setdefault("TVM_NUM_THREADS", "2")
# fluidml.layout_verify times every new layout plan end to end at compile time (on by default for
# users); tests compile hundreds of throwaway plans, so it is off here except where a test asks
# for it (tests/test_layout_verify.py).
os.environ.setdefault("FLUIDML_TVM_LAYOUT_VERIFY", "0")


@pytest.fixture(scope="session", autouse=True)
def _temporary_cache(tmp_path_factory):
    """One temporary measurement cache for the whole run (never the user's ~/.cache): a kernel
    shape measured by one test is reused by the next, as in real use. Tests about the cache itself
    pass their own ``cache_dir``."""
    old = os.environ.get("FLUIDML_TVM_CACHE")
    os.environ["FLUIDML_TVM_CACHE"] = str(tmp_path_factory.mktemp("fluidml-cache"))
    yield
    if old is None:
        os.environ.pop("FLUIDML_TVM_CACHE", None)
    else:
        os.environ["FLUIDML_TVM_CACHE"] = old

