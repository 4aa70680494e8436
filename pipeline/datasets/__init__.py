"""Dataset adapters; ``load_dataset`` picks one by name."""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError

DATASETS = ("synthetic", "folder", "cub", "awa2", "sun")


def load_dataset(name: str, root: Path, splits_file: Path | None = None) -> ImageDataset:
    """The dataset ``name`` rooted at ``root``; CUB/AWA2/SUN need the xlsa17 ``att_splits.mat``."""
    from pipeline.datasets.folder import load_folder
    from pipeline.datasets.gbu import load_gbu
    from pipeline.datasets.synthetic import load_synthetic

    key = name.lower()
    if key == "synthetic":
        return load_synthetic(root)
    if key == "folder":
        return load_folder(root)
    if key in ("cub", "awa2", "sun"):
        if splits_file is None:
            raise PipelineError(f"{name}: pass --splits /path/to/xlsa17/data/{name.upper()}/att_splits.mat")
        return load_gbu(key, root, splits_file)
    raise PipelineError(f"unknown dataset {name!r}; choose one of {DATASETS}")
