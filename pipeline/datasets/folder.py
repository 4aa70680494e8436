"""Class-per-folder image trees (ImageNet style): ``root/<class>/**/<image>``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def find_images(directory: Path) -> list[str]:
    """Image files under ``directory`` as sorted relative POSIX paths.

    Extensions are matched case-insensitively; hidden files and folders (``.*``, such as the
    ``._x.jpg`` resource forks macOS leaves in extracted archives) are skipped.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(directory)
        found += [
            (rel / f).as_posix()
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def load_folder(root: Path, name: str | None = None) -> ImageDataset:
    """Images under ``root/<class>/`` (any depth); class = top-level folder name, classes sorted.

    Images are ordered by relative POSIX path; files directly in ``root`` are ignored; no splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: image folder not found; pass the directory holding one sub-folder per class")
    image_ids = [p for p in find_images(root) if "/" in p]
    if not image_ids:
        raise PipelineError(
            f"{root}: no images (.jpg .jpeg .png .bmp .webp) in class sub-folders; expected root/<class>/<image>"
        )
    top = [p.split("/", 1)[0] for p in image_ids]
    classes = sorted(set(top))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in top], dtype=np.int64)
    return ImageDataset(
        name=name or root.resolve().name, root=root, image_ids=image_ids, labels=labels, classes=classes
    )
