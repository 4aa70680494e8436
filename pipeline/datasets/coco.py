"""MS-COCO 2014 with the 48 seen / 17 unseen zero-shot split of Bansal et al. (2018), as multi-label tags.

``root`` holds ``annotations/instances_{train,val}2014.json`` (``annotations_trainval2014.zip``)
and the images ``train2014/`` and ``val2014/``. The split file (``cls_ids.pickle``: a dict of
sets ``train`` = 48 seen and ``test`` = 17 unseen ids) indexes the 80 categories sorted by
category id. Classes are the 65 categories of the split, in category-id order; an image shows a
class when it has any instance annotation of it (crowd ones included).

- ``trainval``: train2014 images with at least one seen class and no unseen one (Bansal's
  protocol drops training images that show an unseen object);
- ``test``: val2014 images with at least one of the 65 classes.

Rows are the trainval images, then the test images, each sorted by file name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.safe_pickle import load_pickle

N_CATEGORIES = 80


def read_cls_ids(path: Path) -> tuple[list[int], list[int]]:
    """Sorted seen (``train``) and unseen (``test``) category indices of a ``cls_ids.pickle``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: split file not found; pass --splits cls_ids.pickle (the 48/17 COCO split)")
    data = load_pickle(path)
    try:
        seen, unseen = sorted(int(i) for i in data["train"]), sorted(int(i) for i in data["test"])
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path}: not a cls_ids.pickle with 'train' and 'test' id sets ({type(e).__name__}: {e})") from e
    ids = seen + unseen
    if not ids or min(ids) < 0 or max(ids) >= N_CATEGORIES or len(set(ids)) != len(ids):
        raise PipelineError(f"{path}: 'train' and 'test' must be disjoint ids in 0..{N_CATEGORIES - 1}")
    return seen, unseen


def _instances(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; extract annotations_trainval2014.zip of MS-COCO 2014 into the root")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
        return {"images": data["images"], "annotations": data["annotations"], "categories": data["categories"]}
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from e


def _image_tags(path: Path, data: dict[str, Any], column: dict[int, int], n_classes: int) -> tuple[list[str], np.ndarray]:
    """File names sorted, and bool [images, n_classes] from the annotations (category id -> column)."""
    images = sorted(data["images"], key=lambda im: im["file_name"])
    row = {im["id"]: i for i, im in enumerate(images)}
    tags = np.zeros((len(images), n_classes), bool)
    try:
        pairs = [(row[a["image_id"]], column[a["category_id"]]) for a in data["annotations"]
                 if a["category_id"] in column]
    except KeyError as e:
        raise PipelineError(f"{path}: an annotation refers to image id {e}, which is not in its images") from e
    if pairs:
        r, c = np.array(pairs).T
        tags[r, c] = True
    return [im["file_name"] for im in images], tags


def load_coco(root: Path, splits_file: Path) -> ImageDataset:
    """COCO 2014 at ``root`` with the 48/17 split of ``splits_file`` (see module doc)."""
    root = Path(root)
    seen, unseen = read_cls_ids(splits_file)
    train_json = root / "annotations" / "instances_train2014.json"
    val_json = root / "annotations" / "instances_val2014.json"
    train, val = _instances(train_json), _instances(val_json)
    categories = sorted(val["categories"], key=lambda c: c["id"])
    if len(categories) != N_CATEGORIES:
        raise PipelineError(f"{root / 'annotations'}: {len(categories)} categories, expected the {N_CATEGORIES} "
                            "of MS-COCO 2014")
    chosen = sorted(seen + unseen)
    column = {categories[i]["id"]: j for j, i in enumerate(chosen)}
    unseen_tags = np.array([chosen.index(i) for i in unseen], dtype=np.int64)
    is_unseen = np.zeros(len(chosen), bool)
    is_unseen[unseen_tags] = True

    train_files, train_tags = _image_tags(train_json, train, column, len(chosen))
    keep = train_tags[:, ~is_unseen].any(axis=1) & ~train_tags[:, is_unseen].any(axis=1)
    val_files, val_tags = _image_tags(val_json, val, column, len(chosen))
    test = val_tags.any(axis=1)
    image_ids = ([f"train2014/{f}" for f, k in zip(train_files, keep) if k]
                 + [f"val2014/{f}" for f, k in zip(val_files, test) if k])
    n_train = int(keep.sum())
    return ImageDataset(
        name="coco",
        root=root,
        image_ids=image_ids,
        labels=np.full(len(image_ids), -1, dtype=np.int64),
        classes=[categories[i]["name"] for i in chosen],
        splits={"trainval": np.arange(n_train, dtype=np.int64),
                "test": np.arange(n_train, len(image_ids), dtype=np.int64)},
        tags=np.concatenate([train_tags[keep], val_tags[test]]),
        unseen_tags=unseen_tags,
    )
