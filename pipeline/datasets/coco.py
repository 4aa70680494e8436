"""MS-COCO 2014 with the 48 seen / 17 unseen zero-shot split of Bansal et al. (2018), as multi-label tags.

``root`` is one of two layouts of the same images and labels:

- the official release: ``annotations/instances_{train,val}2014.json`` (``annotations_trainval2014.zip``)
  and the images ``train2014/`` and ``val2014/``; an image shows a class when it has any instance
  annotation of it (crowd ones included);
- a label table: ``labels.csv`` with the columns ``file`` (image path relative to ``root``),
  ``split2014`` (``train2014`` or ``val2014``), then one 0/1 column per category named as COCO
  names it, spaces written ``_`` (``../shared/data/coco_real``).

The split file (``cls_ids.pickle``: a dict of sets ``train`` = 48 seen and ``test`` = 17 unseen
ids) indexes the 80 categories sorted by category id (:data:`CATEGORY_NAMES`). Classes are the 65
categories of the split, in category-id order.

- ``trainval``: train2014 images with at least one seen class and no unseen one (Bansal's
  protocol drops training images that show an unseen object);
- ``test``: val2014 images with at least one of the 65 classes.

Rows are the trainval images, then the test images, each sorted by file name.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.safe_pickle import load_pickle
from pipeline.text_files import read_utf8

# The 80 categories of MS-COCO 2014 sorted by category id: the index order of ``cls_ids.pickle``
# and of SDL's ``wordvec_array.pickle``.
CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
N_CATEGORIES = len(CATEGORY_NAMES)
LABEL_TABLE = "labels.csv"
YEAR_SPLITS = ("train2014", "val2014")

# per 2014 split: image paths relative to the root, and bool [images, 80] in category-id order
Labelled = dict[str, tuple[list[str], np.ndarray]]


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
        raise PipelineError(f"{path}: not found; extract annotations_trainval2014.zip of MS-COCO 2014 into the root "
                            f"(or give a root holding {LABEL_TABLE})")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
        return {"images": data["images"], "annotations": data["annotations"], "categories": data["categories"]}
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from e


def _from_instances(root: Path) -> Labelled:
    """Both 2014 splits from the official instance annotations."""
    out: Labelled = {}
    for year in YEAR_SPLITS:
        path = root / "annotations" / f"instances_{year}.json"
        data = _instances(path)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        if len(categories) != N_CATEGORIES:
            raise PipelineError(f"{path}: {len(categories)} categories, expected the {N_CATEGORIES} of MS-COCO 2014")
        names = tuple(c["name"] for c in categories)
        if names != CATEGORY_NAMES:
            first = next(i for i, (a, b) in enumerate(zip(names, CATEGORY_NAMES)) if a != b)
            raise PipelineError(f"{path}: category {first} by id is {names[first]!r}, MS-COCO 2014's is "
                                f"{CATEGORY_NAMES[first]!r}; use the official instances files")
        column = {c["id"]: j for j, c in enumerate(categories)}
        images = sorted(data["images"], key=lambda im: im["file_name"])
        row = {im["id"]: i for i, im in enumerate(images)}
        tags = np.zeros((len(images), N_CATEGORIES), bool)
        try:
            pairs = [(row[a["image_id"]], column[a["category_id"]]) for a in data["annotations"]]
        except KeyError as e:
            raise PipelineError(f"{path}: an annotation refers to id {e}, which is not among its images "
                                "and categories") from e
        if pairs:
            r, c = np.array(pairs).T
            tags[r, c] = True
        out[year] = [f"{year}/{im['file_name']}" for im in images], tags
    return out


def _from_label_table(table: Path) -> Labelled:
    """Both 2014 splits from a ``labels.csv`` (see the module docstring)."""
    columns = [name.replace(" ", "_") for name in CATEGORY_NAMES]
    reader = csv.DictReader(io.StringIO(read_utf8(table, "label table"), newline=""))
    missing = [c for c in ("file", "split2014", *columns) if c not in (reader.fieldnames or [])]
    if missing:
        raise PipelineError(f"{table}: no column {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            f"in the header; expected file, split2014 and the {N_CATEGORIES} COCO categories")
    rows = list(reader)
    files: dict[str, list[str]] = {year: [] for year in YEAR_SPLITS}
    tags: dict[str, list[list[bool]]] = {year: [] for year in YEAR_SPLITS}
    for lineno, row in enumerate(rows, 2):
        year, file = (row["split2014"] or "").strip(), (row["file"] or "").strip()
        values = [(row[c] or "").strip() for c in columns]
        if year not in YEAR_SPLITS or not file or any(v not in ("0", "1") for v in values):
            raise PipelineError(f"{table}:{lineno}: need a file, split2014 in {YEAR_SPLITS} and 0/1 per category, "
                                f"got {file!r}, {year!r}")
        files[year].append(file)
        tags[year].append([v == "1" for v in values])
    out: Labelled = {}
    for year in YEAR_SPLITS:
        order = np.argsort(files[year], kind="stable")
        out[year] = [files[year][i] for i in order], np.array(tags[year], bool).reshape(-1, N_CATEGORIES)[order]
    return out


def load_coco(root: Path, splits_file: Path) -> ImageDataset:
    """COCO 2014 at ``root`` (either layout) with the 48/17 split of ``splits_file`` (see module doc)."""
    root = Path(root)
    seen, unseen = read_cls_ids(splits_file)
    table = root / LABEL_TABLE
    labelled = _from_label_table(table) if table.is_file() else _from_instances(root)
    chosen = sorted(seen + unseen)
    unseen_tags = np.array([chosen.index(i) for i in unseen], dtype=np.int64)
    train_files, train_tags = labelled["train2014"]
    val_files, val_tags = labelled["val2014"]
    train_tags, val_tags = train_tags[:, chosen], val_tags[:, chosen]
    is_unseen = np.isin(np.arange(len(chosen)), unseen_tags)
    keep = train_tags[:, ~is_unseen].any(axis=1) & ~train_tags[:, is_unseen].any(axis=1)
    test = val_tags.any(axis=1)
    image_ids = [f for f, k in zip(train_files, keep) if k] + [f for f, k in zip(val_files, test) if k]
    n_train = int(keep.sum())
    return ImageDataset(
        name="coco",
        root=root,
        image_ids=image_ids,
        labels=np.full(len(image_ids), -1, dtype=np.int64),
        classes=[CATEGORY_NAMES[i] for i in chosen],
        splits={"trainval": np.arange(n_train, dtype=np.int64),
                "test": np.arange(n_train, len(image_ids), dtype=np.int64)},
        tags=np.concatenate([train_tags[keep], val_tags[test]]),
        unseen_tags=unseen_tags,
    )
