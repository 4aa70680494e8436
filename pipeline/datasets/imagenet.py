"""ImageNet zero-shot (the GCNZ / DGP protocol): 1K ILSVRC-2012 training classes, 21K test classes.

Layout under ``root`` (each part a class-per-folder tree, folder name = wnid)::

    train/<wnid>/...   ILSVRC-2012 training images of the split file's ``train`` wnids -> trainval
    val/<wnid>/...     optional: ILSVRC-2012 validation images in class folders       -> test_seen
    test/<wnid>/...    ImageNet-21K images of the split file's ``test`` wnids           -> test_unseen

``test`` may be (a link to) the whole ImageNet-21K tree: folders of wnids that are not test
classes (the 1K among them) are skipped and counted in the log. The split file is
``imagenet-split.json`` (``{"train": [1000 wnids], "test": [20842 wnids]}``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.datasets.folder import find_images
from pipeline.errors import PipelineError
from pipeline.text_files import read_utf8

log = logging.getLogger(__name__)

PARTS = (("train", "train", "trainval"), ("val", "train", "test_seen"), ("test", "test", "test_unseen"))


def read_imagenet_split(path: Path) -> tuple[list[str], list[str]]:
    """The (train, test) wnid lists of an ``imagenet-split.json``; checked to be disjoint wnid lists."""
    try:
        data = json.loads(read_utf8(path, "split file"))
        train, test = list(data["train"]), list(data["test"])
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not an ImageNet split file ({e!r}); expected "
                            '{"train": [wnid, ...], "test": [wnid, ...]} as imagenet-split.json') from e
    if len(set(train + test)) != len(train) + len(test):
        raise PipelineError(f"{path}: a wnid is listed twice, or as both train and test class; fix the split file")
    return train, test


def load_imagenet(root: Path, split_file: Path) -> ImageDataset:
    """ImageNet images under ``root`` (see the module docstring) with the zero-shot splits of ``split_file``.

    The classes are every wnid of the split file, train then test, in file order, whether or not
    images of them are present, so that Hit@k over the protocol's candidate sets (2-hops,
    3-hops, all) counts all of their classes; every train wnid is a seen class (``seen_classes``),
    with or without images under ``train/``.
    """
    root = Path(root)
    train, test = read_imagenet_split(split_file)
    classes = train + test
    index = {wnid: i for i, wnid in enumerate(classes)}
    allowed = {"train": set(train), "test": set(test)}
    image_ids: list[str] = []
    labels: list[int] = []
    splits: dict[str, np.ndarray] = {}
    for part, kind, split in PARTS:
        folder = root / part
        if not folder.is_dir():
            if part == "val":
                splits[split] = np.empty(0, np.int64)
                continue
            raise PipelineError(f"{folder}: not found; ImageNet needs {root}/train/<wnid>/ (ILSVRC-2012) "
                                f"and {root}/test/<wnid>/ (ImageNet-21K test classes)")
        start = len(image_ids)
        skipped: set[str] = set()
        for rel in find_images(folder):
            if "/" not in rel:
                continue  # a file beside the class folders
            wnid = rel.split("/", 1)[0]
            if wnid not in allowed[kind]:
                if part != "test":
                    raise PipelineError(f"{folder / wnid}: {wnid!r} is not one of the {len(allowed[kind])} "
                                        f"{kind} classes of {split_file}; {part}/ holds one folder per {kind} wnid")
                skipped.add(wnid)
                continue
            image_ids.append(f"{part}/{rel}")
            labels.append(index[wnid])
        if skipped:
            log.info("%s: skipped %d folders of non-test classes (e.g. %s)", folder, len(skipped), min(skipped))
        if len(image_ids) == start:
            raise PipelineError(f"{folder}: no images of the {kind} classes of {split_file}; "
                                f"expected {part}/<wnid>/<image>")
        splits[split] = np.arange(start, len(image_ids), dtype=np.int64)
    # every train wnid is a seen class, images here or not (the backbone's classifier rows stand for them)
    return ImageDataset("imagenet", root, image_ids, np.array(labels, dtype=np.int64), classes, splits,
                        seen_classes=np.arange(len(train), dtype=np.int64))
