"""Shared fixtures: the real benchmark metadata in ../shared, when present; small real file systems; toy
feature stores."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pipeline  # noqa: F401  (first: thread wait policies before numpy and torch load their pools)

# isort: split
import numpy as np
import pytest

from pipeline.datasets.base import ImageDataset
from pipeline.store import FeatureWriter, create_store

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
    """Mount a tmpfs with ``options`` on ``folder`` for a test: skipped where mounting needs root, a failure
    under CI=true (CI runs as root, so a skip there would hide the full-disk tests)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("cannot mount a tmpfs; CI must run as root (the full-disk tests need it)")
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


def write_toy_store(path: Path, labels: np.ndarray, n_classes: int | list[str],
                    splits: dict[str, np.ndarray] | None = None, pooled: np.ndarray | None = None,
                    grid: np.ndarray | None = None, mid: np.ndarray | None = None, *,
                    finish: bool = True) -> Path:
    """A feature store of images ``0.jpg ...`` with these ``labels`` and classes (a count, named ``c0 ...``,
    or the names), ``splits`` (default: every image in trainval) and, when ``pooled`` is given, these
    rows written (``grid`` / ``mid``: their spatial features) and, with ``finish``, the store finished.
    Without rows it stays a pending store that only fixes the classes and their order."""
    classes = [f"c{i}" for i in range(n_classes)] if isinstance(n_classes, int) else list(n_classes)
    n = len(labels)
    data = ImageDataset("toy", Path("/nowhere"), [f"{i}.jpg" for i in range(n)], np.asarray(labels), classes,
                        {"trainval": np.arange(n)} if splits is None else splits)
    create_store(path, data, pooled.shape[1] if pooled is not None else 4, "float32",
                 grid.shape[1:] if grid is not None else None, {},
                 mid_grid_shape=mid.shape[1:] if mid is not None else None)
    if pooled is not None:
        with FeatureWriter(path) as w:
            w.write(np.arange(n), pooled, *(a for a in (grid, mid) if a is not None))
            if finish:
                w.finalize({})
    return path
