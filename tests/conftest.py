import os

import pytest

# Tests measure nothing, but the runtime must use the same thread count everywhere.
os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _temporary_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty measurement cache: no test depends on another's measurements."""
    monkeypatch.setenv("FLUIDML_TVM_CACHE", str(tmp_path_factory.mktemp("fluidml-cache")))
