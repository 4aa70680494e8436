"""CUB-200-2011, AwA2 and SUN in their original archive layouts, with the GBU (xlsa17) splits.

Rows follow the benchmark's ``res101.mat`` order, which is the sorted order of the relative
image paths, so the 1-based ``*_loc`` indices of ``att_splits.mat`` (stored here 0-based)
select the right images. ``root`` is the directory the archive was extracted into:

- ``CUB``:  the ``CUB_200_2011`` folder (from ``CUB_200_2011.tgz``) containing ``images/``;
  class = image folder name (``images/001.Black_footed_Albatross/x.jpg``).
- ``AWA2``: the ``Animals_with_Attributes2`` folder (from ``AwA2-data.zip``) containing
  ``JPEGImages/``; class = image folder name (``JPEGImages/antelope/antelope_10001.jpg``).
- ``SUN``:  the folder containing ``images/`` (from ``SUNAttributeDB_Images.tar.gz``); class =
  the folders below ``images/<letter>/`` joined with ``_``
  (``images/a/airport/airport/sun_x.jpg`` -> ``airport_airport``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import scipy.io

from pipeline.datasets.base import ImageDataset
from pipeline.datasets.folder import find_images
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class _Layout:
    images: str  # image folder, relative to root
    class_parts: slice  # path parts below ``images`` that name the class, joined with "_"
    root_is: str  # what ``root`` must be, for error messages


LAYOUTS = {
    "CUB": _Layout("images", slice(-2, -1), "the CUB_200_2011 folder containing images/"),
    "AWA2": _Layout("JPEGImages", slice(-2, -1), "the Animals_with_Attributes2 folder containing JPEGImages/"),
    "SUN": _Layout("images", slice(1, -1), "the folder containing images/<letter>/ of the SUN attribute archive"),
}

_LOC_KEYS = {"trainval": "trainval_loc", "test_seen": "test_seen_loc", "test_unseen": "test_unseen_loc"}
_OPTIONAL_LOC_KEYS = {"train": "train_loc", "val": "val_loc"}


class AttSplits(TypedDict):
    """Contents of an xlsa17 ``att_splits.mat``, class-major and 0-based."""

    classes: list[str]  # ``allclasses_names``, in class-index order
    att: np.ndarray  # [C, A] float64 (the mat stores A x C)
    original_att: np.ndarray | None  # [C, A] before L2 normalisation; None where absent (binaryAtt_splits.mat)
    splits: dict[str, np.ndarray]  # sorted 0-based row indices: trainval, test_seen, test_unseen[, train, val]


def read_att_splits(path: Path) -> AttSplits:
    """Read an xlsa17 ``att_splits.mat`` (or ``binaryAtt_splits.mat``)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: splits file not found; pass att_splits.mat from the xlsa17 archive")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise PipelineError(f"{path}: cannot read as a MATLAB v5 file ({e}); pass att_splits.mat from xlsa17") from e
    missing = [k for k in ("allclasses_names", "att", *_LOC_KEYS.values()) if k not in mat]
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; is this an xlsa17 att_splits.mat?")
    classes = [str(np.ravel(cell)[0]) for cell in mat["allclasses_names"].ravel()]

    def class_major(key: str) -> np.ndarray:
        a = np.asarray(mat[key], dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(classes):
            raise PipelineError(f"{path}: {key} has shape {a.shape}, expected attributes x {len(classes)} classes")
        return np.ascontiguousarray(a.T)

    splits = {}
    for name, key in {**_LOC_KEYS, **_OPTIONAL_LOC_KEYS}.items():
        if key in mat:
            loc = mat[key].ravel().astype(np.int64)
            if len(loc) and loc.min() < 1:
                raise PipelineError(f"{path}: {key} holds {loc.min()}, but locs must be 1-based row indices")
            splits[name] = np.sort(loc - 1)
    return AttSplits(
        classes=classes,
        att=class_major("att"),
        original_att=class_major("original_att") if "original_att" in mat else None,
        splits=splits,
    )


def load_gbu(name: str, root: Path, splits_file: Path) -> ImageDataset:
    """CUB, AWA2 or SUN (case-insensitive) from the original archive at ``root`` (see module doc).

    Classes follow ``allclasses_names``; splits are trainval, test_seen, test_unseen (and
    train/val where the mat has them). ``image_ids`` are relative to ``root``.
    """
    key = name.upper()
    if key not in LAYOUTS:
        raise PipelineError(f"unknown GBU dataset {name!r}; expected one of {', '.join(LAYOUTS)}")
    layout, root = LAYOUTS[key], Path(root)
    image_dir = root / layout.images
    if not image_dir.is_dir():
        raise PipelineError(f"{image_dir} not found: for {key}, root must be {layout.root_is}")
    meta = read_att_splits(splits_file)

    rel = find_images(image_dir)
    index = {c: i for i, c in enumerate(meta["classes"])}
    names = ["_".join(p.split("/")[layout.class_parts]) for p in rel]
    unknown = [(c, p) for c, p in zip(names, rel) if c not in index]
    if unknown:
        c, p = unknown[0]
        raise PipelineError(
            f"{image_dir / p}: class {c!r} is not in allclasses_names of {splits_file} "
            f"({len(unknown)} such images); root must be {layout.root_is}, with the {key} splits file"
        )
    expected = sum(len(meta["splits"][s]) for s in _LOC_KEYS)
    max_loc = max(int(meta["splits"][s].max(initial=-1)) + 1 for s in _LOC_KEYS)
    if len(rel) != expected or max_loc != expected:
        raise PipelineError(
            f"found {len(rel)} images under {image_dir}, {splits_file} expects {expected} "
            f"(locs up to {max_loc}){_first_missing(root / 'images.txt', image_dir, rel)}: "
            "is the archive complete and unmodified?"
        )
    return ImageDataset(
        name=key,
        root=root,
        image_ids=[f"{layout.images}/{p}" for p in rel],
        labels=np.array([index[c] for c in names], dtype=np.int64),
        classes=meta["classes"],
        splits=meta["splits"],
    )


def _first_missing(listing: Path, image_dir: Path, found: list[str]) -> str:
    """``; first missing: PATH (of N listed in images.txt)`` when the archive's image list (CUB's
    ``images.txt``: ``<id> <class>/<file>`` per line) is there and names an image not found, else ''."""
    if not listing.is_file():
        return ""
    try:
        listed = [line.split(maxsplit=1)[1] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, IndexError):
        return ""  # an unreadable list only loses the hint; the count above still stands
    missing = sorted(set(listed) - set(found))
    return f"; {len(missing)} of the {len(listed)} in {listing.name} missing, first: {image_dir / missing[0]}" if missing else ""
