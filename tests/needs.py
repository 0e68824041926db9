"""Tools some tests need (cross compiler, qemu, nvcc, a C++ compiler)."""

from __future__ import annotations

import os

import pytest


def require(missing: str | None, what: str) -> None:
    """Skip a test whose tool is missing here, with the reason; in CI (``CI=true``) a missing tool
    is a failure instead: there it means an install step of the README broke."""
    if missing is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing in CI ({missing}): install as README.md says")
    pytest.skip(f"{what} missing: {missing}")
