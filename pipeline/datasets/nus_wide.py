"""NUS-WIDE in its official release layout, with the 925 seen / 81 unseen tags of SDL and LESA.

Classes are the 1006 names sorted (Python string order, as the protocol's ``classes.pickle``):
the 925 Flickr user tags of ``TagList1k.txt`` that are not among the 81 concepts of
``Concepts81.txt``, plus those 81 concepts, which are the unseen tags. Seen-tag positives come
from the user tags (``AllTags1k.txt``), unseen-tag positives from the human ground truth
(``AllLabels/Labels_<concept>.txt``), also for the ~75 concepts that are user tags too.

``root`` holds the images as ``Flickr/<folder>/<file>.jpg`` (``image_ids`` are those paths) and
the extracted metadata archives anywhere below it; each file is found by name:

- ``Imagelist.txt``, ``TrainImagelist.txt``, ``TestImagelist.txt`` (``ImageList.zip``):
  ``Imagelist.txt`` gives the rows (269,648 images, the order of every label file);
  the other two give the ``trainval`` and ``test`` splits.
- ``AllTags1k.txt``, ``TagList1k.txt`` (``NUS_WID_Tags.zip``): 1000 0/1 values per image.
- ``Concepts81.txt`` (``ConceptsList.zip``).
- ``AllLabels/Labels_<concept>.txt`` (``Groundtruth.zip``): one 0/1 per image.

Image files are not checked here: feature extraction records missing ones as failures.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError

ARCHIVES = {
    "Imagelist.txt": "ImageList.zip",
    "TrainImagelist.txt": "ImageList.zip",
    "TestImagelist.txt": "ImageList.zip",
    "AllTags1k.txt": "NUS_WID_Tags.zip",
    "TagList1k.txt": "NUS_WID_Tags.zip",
    "Concepts81.txt": "ConceptsList.zip",
    "AllLabels": "Groundtruth.zip",
}
_CHUNK = 1 << 23  # bytes parsed at a time by read_binary_matrix


def find_metadata(root: Path) -> dict[str, Path]:
    """Where each name of :data:`ARCHIVES` lies under ``root`` (the first os.walk meets); ``Flickr/`` is skipped."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "Flickr" and not d.startswith("."))
        for name in [*dirnames, *filenames]:
            if name in ARCHIVES and name not in found and (name == "AllLabels") == (name in dirnames):
                found[name] = Path(dirpath) / name
    missing = [n for n in ARCHIVES if n not in found]
    if missing:
        raise PipelineError(f"{root}: no {missing[0]} found below it; extract {ARCHIVES[missing[0]]} of the "
                            "NUS-WIDE release there" + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    return found


def _lines(path: Path) -> list[str]:
    """Non-blank lines of a text file, stripped (the release has Windows line ends)."""
    return [s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]


def _image_key(line: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg`` or ``actor\\0001_2124494179.jpg`` -> ``actor/0001_2124494179.jpg``."""
    parts = line.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _parse_lines(path: Path, data: bytes, width: int, lineno: int) -> np.ndarray:
    """Whole lines ``data`` (the first is line ``lineno + 1``) -> bool [non-blank lines, width]."""
    a = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(a == ord("\n"))
    if data.translate(None, b"01 \t\r\n"):
        bad = int(np.flatnonzero(~np.isin(a, np.frombuffer(b"01 \t\r\n", np.uint8)))[0])
        raise PipelineError(f"{path}:{lineno + int(np.searchsorted(ends, bad)) + 1}: expected only 0/1 values, "
                            f"found {chr(a[bad])!r}; is the file from the NUS-WIDE release, unmodified?")
    digits = np.flatnonzero((a & 0xFE) == ord("0"))  # positions of the 0s and 1s
    per_line = np.diff(np.searchsorted(digits, ends), prepend=0)
    wrong = np.flatnonzero((per_line != width) & (per_line != 0))
    if len(wrong):
        raise PipelineError(f"{path}:{lineno + int(wrong[0]) + 1}: {per_line[wrong[0]]} values, expected {width}; "
                            "is the file from the NUS-WIDE release, unmodified?")
    return (a[digits] == ord("1")).reshape(-1, width)


def read_binary_matrix(path: Path, width: int) -> np.ndarray:
    """A text file of ``width`` whitespace-separated 0/1 values per line -> bool [lines, width].

    Parses the bytes with numpy, a few MiB at a time (``AllTags1k.txt``, 269,648 x 1000, in
    seconds); blank lines are skipped.
    """
    rows: list[np.ndarray] = []
    lineno = 0
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(_CHUNK)
            data = rest + block
            if block:  # parse whole lines only; the tail waits for the next block
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            elif data and not data.endswith(b"\n"):
                data += b"\n"
            if data:
                rows.append(_parse_lines(path, data, width, lineno))
                lineno += data.count(b"\n")
            if not block:
                break
    return np.concatenate(rows) if rows else np.zeros((0, width), bool)


def nus_wide_classes(user_tags: list[str], concepts: list[str]) -> tuple[list[str], np.ndarray]:
    """The sorted 1006 (925 + 81) class names and the indices of the concepts (unseen tags) among them."""
    classes = sorted(set(user_tags) | set(concepts))
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array(sorted(index[c] for c in set(concepts)), dtype=np.int64)


def load_nus_wide(root: Path) -> ImageDataset:
    """NUS-WIDE at ``root`` (see module doc): 1006 tags, 81 unseen; splits trainval and test."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: NUS-WIDE folder not found; pass the folder holding Flickr/ and the metadata")
    files = find_metadata(root)
    user_tags, concepts = _lines(files["TagList1k.txt"]), _lines(files["Concepts81.txt"])
    for path, names in ((files["TagList1k.txt"], user_tags), (files["Concepts81.txt"], concepts)):
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise PipelineError(f"{path}: tag {dup!r} listed twice; is the file from the NUS-WIDE release?")
    classes, unseen = nus_wide_classes(user_tags, concepts)

    keys = [_image_key(line) for line in _lines(files["Imagelist.txt"])]
    n = len(keys)
    user = read_binary_matrix(files["AllTags1k.txt"], len(user_tags))
    if len(user) != n:
        raise PipelineError(f"{files['AllTags1k.txt']}: {len(user)} rows but {files['Imagelist.txt']} lists {n} "
                            "images; use both from the same NUS-WIDE release")
    column = {t: j for j, t in enumerate(user_tags)}  # class -> column of ``user``
    extra = []  # ground truth of the concepts that are no user tag, appended as columns
    for concept in concepts:
        path = files["AllLabels"] / f"Labels_{concept}.txt"
        if not path.is_file():
            raise PipelineError(f"{path}: ground truth of concept {concept!r} missing; extract Groundtruth.zip "
                                "of the NUS-WIDE release")
        truth = read_binary_matrix(path, 1)
        if len(truth) != n:
            raise PipelineError(f"{path}: {len(truth)} rows but {files['Imagelist.txt']} lists {n} images")
        if concept in column:
            user[:, column[concept]] = truth[:, 0]  # the ground truth replaces the user tag
        else:
            column[concept] = len(user_tags) + len(extra)
            extra.append(truth)
    if extra:
        user = np.concatenate([user, *extra], axis=1)
    tags = np.take(user, [column[c] for c in classes], axis=1)
    del user

    splits, known = {}, set(keys)
    for split, name in (("trainval", "TrainImagelist.txt"), ("test", "TestImagelist.txt")):
        wanted = {_image_key(line) for line in _lines(files[name])}
        rows = np.array([i for i, k in enumerate(keys) if k in wanted], dtype=np.int64)
        unknown = wanted - known
        if unknown:
            raise PipelineError(f"{files[name]}: {len(unknown)} images not in {files['Imagelist.txt']} "
                                f"(first: {min(unknown)}); use both from the same NUS-WIDE release")
        splits[split] = rows
    return ImageDataset(
        name="nus_wide",
        root=root,
        image_ids=[f"Flickr/{k}" for k in keys],
        labels=np.full(n, -1, dtype=np.int64),
        classes=classes,
        splits=splits,
        tags=tags,
        unseen_tags=unseen,
    )
