"""Class-per-folder image trees (ImageNet style): ``root/<class>/**/<image>``, optionally with a zero-shot
split from a list of unseen classes."""
from __future__ import annotations

import difflib
import os
import zlib
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.text_files import read_utf8

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
TEST_SEEN_FRACTION = 0.2  # of each seen class's images, held out as test_seen (GBU's protocol)


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


def load_folder(root: Path, name: str | None = None, unseen: Path | None = None) -> ImageDataset:
    """Images under ``root/<class>/`` (any depth); class = top-level folder name, classes sorted.

    Images are ordered by relative POSIX path; files directly in ``root`` are ignored. Without
    ``unseen`` there are no splits (extract, predict); with it (a text file, one class folder name per
    line) the tree becomes a zero-shot dataset, see :func:`zero_shot_splits`.
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
    splits = zero_shot_splits(image_ids, labels, classes, read_unseen(unseen, classes)) if unseen else {}
    return ImageDataset(
        name=name or root.resolve().name, root=root, image_ids=image_ids, labels=labels, classes=classes, splits=splits
    )


def read_unseen(path: Path, classes: list[str]) -> list[str]:
    """The unseen class names listed in ``path`` (one per line; blank lines and ``#`` comments skipped),
    each checked against the tree's ``classes``."""
    if not path.is_file():
        raise PipelineError(f"{path}: unseen-class list not found; give a text file with one class folder name per line")
    names = [line.split("#", 1)[0].strip() for line in read_utf8(path, "unseen-class list").splitlines()]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in classes]
    if unknown:
        close = difflib.get_close_matches(unknown[0], classes, n=1)
        raise PipelineError(f"{path}: {len(unknown)} unseen classes have no folder, e.g. {unknown[0]!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "") + f"; the {len(classes)} folders "
                            f"are {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}")
    if not names or len(set(names)) == len(classes):
        raise PipelineError(f"{path}: list between 1 and {len(classes) - 1} of the {len(classes)} classes as unseen")
    return names


def zero_shot_splits(image_ids: list[str], labels: np.ndarray, classes: list[str],
                     unseen: list[str]) -> dict[str, np.ndarray]:
    """``test_unseen``: every image of the unseen classes; each seen class keeps
    ``TEST_SEEN_FRACTION`` of its images (at least one when it has two) as ``test_seen``, drawn with a
    seed from the class name (the same whatever the other classes), and trains on the rest
    (``trainval``; training carves validation classes from it)."""
    unseen_index = {classes.index(n) for n in unseen}
    splits: dict[str, list[int]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    for c, name in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        if c in unseen_index:
            splits["test_unseen"] += rows.tolist()
            continue
        held = max(1, round(TEST_SEEN_FRACTION * len(rows))) if len(rows) > 1 else 0
        order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(rows))
        splits["test_seen"] += rows[order[:held]].tolist()
        splits["trainval"] += rows[order[held:]].tolist()
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in splits.items()}
