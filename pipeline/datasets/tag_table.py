"""Any multi-label dataset described by a table: one row per image with its tags and split.

The table is a CSV or TSV file (tab-separated when named ``.tsv`` or its header holds a tab)
with a header naming at least the columns ``image`` (path relative to the table's folder),
``tags`` (separated by ``;``, may be empty) and ``split`` (``trainval`` or ``test``)::

    image,tags,split
    photos/001.jpg,dog;beach,trainval
    photos/002.jpg,cat,test

Classes are the sorted union of all tags; rows follow the table. The unseen tags are listed in
a text file, one per line.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.text_files import read_utf8

COLUMNS = ("image", "tags", "split")
TABLE_SPLITS = ("trainval", "test")


def read_tag_list(path: Path) -> list[str]:
    """Non-blank lines of a text file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: unseen-tag list not found; pass a text file with one unseen tag per line")
    return [s.strip() for s in read_utf8(path, "unseen-tag list").splitlines() if s.strip()]


def load_tag_table(table: Path, unseen_file: Path) -> ImageDataset:
    """The dataset of ``table`` (see module doc), named after its file stem; ``unseen_file`` lists unseen tags."""
    table = Path(table)
    if not table.is_file():
        raise PipelineError(f"{table}: tag table not found; pass a CSV/TSV with columns image, tags, split")
    text = read_utf8(table, "tag table")
    tab = table.suffix.lower() == ".tsv" or "\t" in text.partition("\n")[0]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if tab else ",")
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PipelineError(f"{table}: no column {', '.join(missing)} in the header; "
                            f"expected a header with {', '.join(COLUMNS)}")
    rows = list(reader)
    if not rows:
        raise PipelineError(f"{table}: no images listed")
    image_ids, image_tags, split_of = [], [], []
    for lineno, row in enumerate(rows, 2):
        image = (row["image"] or "").strip().replace("\\", "/").removeprefix("./")
        split = (row["split"] or "").strip()
        if not image or split not in TABLE_SPLITS:
            raise PipelineError(f"{table}:{lineno}: need an image path and a split in {TABLE_SPLITS}, "
                                f"got {image!r}, {split!r}")
        image_ids.append(image)
        image_tags.append({t.strip() for t in (row["tags"] or "").split(";") if t.strip()})
        split_of.append(split)
    dups = [p for p, n in Counter(image_ids).items() if n > 1]
    if dups:
        dup = dups[0]
        raise PipelineError(f"{table}: image {dup!r} listed more than once; give each image one row with all its tags")

    classes = sorted(set().union(*image_tags))
    index = {c: i for i, c in enumerate(classes)}
    unseen = read_tag_list(unseen_file)
    unknown = [t for t in unseen if t not in index]
    if unknown:
        raise PipelineError(f"{unseen_file}: tag {unknown[0]!r} does not occur in {table} "
                            f"({len(unknown)} such tags); list only tags of the table")
    tags = np.zeros((len(image_ids), len(classes)), bool)
    for i, names in enumerate(image_tags):
        tags[i, [index[t] for t in names]] = True
    split_arr = np.array(split_of)
    return ImageDataset(
        name=table.stem,
        root=table.parent,
        image_ids=image_ids,
        labels=np.full(len(image_ids), -1, dtype=np.int64),
        classes=classes,
        splits={s: np.flatnonzero(split_arr == s).astype(np.int64) for s in TABLE_SPLITS},
        tags=tags,
        unseen_tags=np.array(sorted({index[t] for t in unseen}), dtype=np.int64),
    )
