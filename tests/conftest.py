"""Shared fixtures: the real benchmark metadata in ../shared, when present; small real file systems."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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


def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``folder`` for a test (skipped where mounting needs root)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that runs out of space."""
    yield from _tmpfs(tmp_path / "disk", "size=1m")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs."""
    yield from _tmpfs(tmp_path / "ro", "ro,size=64k")
