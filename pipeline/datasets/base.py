"""The one dataset type every adapter returns: image paths, labels (or tags), classes and splits."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.errors import PipelineError

SPLIT_NAMES = ("trainval", "train", "val", "test_seen", "test_unseen", "test")


@dataclass(frozen=True)
class ImageDataset:
    """A list of images with class labels, class names and named index splits.

    ``image_ids[i]`` is the path of image ``i`` relative to ``root`` (POSIX separators);
    ``labels[i]`` is its class index into ``classes`` (-1 when unknown);
    ``splits[name]`` holds sorted 0-based row indices (names from ``SPLIT_NAMES``).
    Row order is the order features are stored in, so benchmark split indices line up.

    Multi-label datasets (NUS-WIDE, COCO, tag tables) set ``tags`` [N, C] bool (image ``i``
    shows class ``c``), ``unseen_tags`` (sorted class indices never used in training), labels
    all -1, and the splits ``trainval`` and ``test``.

    Datasets whose protocol names training classes that may lack images here (ImageNet's 1000
    ILSVRC classes: the backbone's classifier rows stand for them, GCNZ / DGP) set ``seen_classes``,
    the sorted class indices of every training class, images or not; the others' seen classes are
    those of ``trainval``.

    Datasets of tar shards (WebDataset) set ``members`` [N, 2] int64: image ``i`` is the ``size``
    bytes at ``offset`` of the tar ``root / image_ids[i]`` begins with (``<shard>.tar/<member>``).
    """

    name: str
    root: Path
    image_ids: list[str]
    labels: np.ndarray
    classes: list[str]
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    tags: np.ndarray | None = None
    unseen_tags: np.ndarray | None = None
    members: np.ndarray | None = None
    seen_classes: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.tags is not None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if (self.tags is None) != (self.unseen_tags is None):
            raise PipelineError(f"{self.name}: a multi-label dataset needs both tags and unseen_tags")
        if self.tags is not None:
            if self.tags.shape != (n, len(self.classes)) or self.tags.dtype != bool:
                raise PipelineError(f"{self.name}: tags must be bool [{n}, {len(self.classes)}], "
                                    f"got {self.tags.dtype} {self.tags.shape}")
            u = self.unseen_tags
            if u.ndim != 1 or (len(u) and (u.min() < 0 or u.max() >= len(self.classes))) or (np.diff(u) <= 0).any():
                raise PipelineError(f"{self.name}: unseen_tags must be sorted distinct class indices")
        if self.members is not None and self.members.shape != (n, 2):
            raise PipelineError(f"{self.name}: members must be [{n}, 2] (offset, size), got {self.members.shape}")
        if self.labels.shape != (n,):
            raise PipelineError(f"{self.name}: {n} images but labels of shape {self.labels.shape}")
        if n and (self.labels.max() >= len(self.classes) or self.labels.min() < -1):
            raise PipelineError(
                f"{self.name}: labels must lie in [-1, {len(self.classes) - 1}] for {len(self.classes)} classes"
            )
        outside = next((i for i in self.image_ids if i.startswith("/") or "/../" in f"/{i}/"), None)
        if outside is not None:
            raise PipelineError(f"{self.name}: image {outside!r} leaves the dataset root {self.root}; image lists "
                                "may only name files below it (relative paths without '..')")
        if self.seen_classes is not None:
            check_seen_classes(self.name, self.seen_classes, self.labels, self.splits, len(self.classes))
        for split, idx in self.splits.items():
            if split not in SPLIT_NAMES:
                raise PipelineError(f"{self.name}: unknown split {split!r}; expected one of {SPLIT_NAMES}")
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise PipelineError(f"{self.name}: split {split!r} indexes outside 0..{n - 1}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, i: int) -> Path:
        """Absolute path of image ``i`` (for tar shards: the member's path inside its tar)."""
        return self.root / self.image_ids[i]

    def open(self, i: int) -> BinaryIO:
        """The bytes of image ``i``: its file, or its member of a tar shard (read by offset)."""
        if self.members is None:
            path = self.path(i)
            if (path.exists() or path.is_symlink()) and not path.is_file():  # a FIFO would block the read forever
                raise OSError(f"not a regular file (a FIFO, a device, a broken link or a link loop): {path}")
            return open(path, "rb")
        shard = self.root / self.image_ids[i].split("/", 1)[0]
        offset, size = (int(v) for v in self.members[i])
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{shard} ends inside {self.image_ids[i]}: truncated shard")
        return io.BytesIO(data)


def check_seen_classes(name: str, seen: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray],
                       n_classes: int) -> None:
    """Refuse seen classes that are not sorted distinct class indices, that leave out a class of
    ``trainval`` or that include a class of ``test_unseen`` (``name``: the dataset or store, for the message)."""
    if seen.ndim != 1 or (len(seen) and (seen.min() < 0 or seen.max() >= n_classes)) or (np.diff(seen) <= 0).any():
        raise PipelineError(f"{name}: seen_classes must be sorted distinct class indices below {n_classes}")
    for split, inside in (("trainval", True), ("test_unseen", False)):
        if split in splits and len(splits[split]):
            present = np.unique(labels[splits[split]])
            wrong = present[np.isin(present, seen) != inside]
            if len(wrong):
                raise PipelineError(f"{name}: class {int(wrong[0])} of {split} is {'not ' if inside else ''}among "
                                    "the seen classes; check the split file")
