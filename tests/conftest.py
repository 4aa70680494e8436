"""Shared fixtures: the real benchmark metadata in ../shared, when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skipped where absent, a failure under CI=true."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing; CI must run with ../shared beside the checkout")
        pytest.skip(f"{SHARED} not present (real benchmark metadata lives only on developer machines)")
    return SHARED
