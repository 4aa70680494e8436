"""Import the benchmark's precomputed xlsa17 features (``res101.mat``) into a feature store.

``res101.mat`` holds ``features`` (2048 x N, ResNet-101 pooled, ImageNet weights, 224 px),
``labels`` (N x 1, 1-based index into ``allclasses_names`` of ``att_splits.mat``) and
``image_files`` (N x 1 cell of absolute paths on the benchmark authors' machines). Rows keep
the mat's order, so the ``*_loc`` splits of ``att_splits.mat`` select the same images.

``image_ids`` are those paths with repeated ``/`` collapsed and the authors' prefix dropped:
a path is cut just before the first of these anchors it contains as whole path segments
(tried in this order), e.g. for the real files:

- ``CUB_200_2011/images/``                 -> ``CUB_200_2011/images/001.Black_footed_Albatross/x.jpg``
- ``Animals_with_Attributes2/JPEGImages/`` -> ``Animals_with_Attributes2/JPEGImages/antelope/x.jpg``
- ``VOCdevkit/``, ``ayahoo_test_images/``  (aPY's two archives)
- ``images/``                              -> ``images/a/abbey/x.jpg`` (SUN)

A path containing none of them is kept as given (after collapsing ``/``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from pipeline.datasets.base import ImageDataset
from pipeline.datasets.gbu import read_att_splits
from pipeline.errors import PipelineError
from pipeline.outputs import check_replaceable
from pipeline.store import DTYPES, FeatureWriter, create_store

ANCHORS = ("CUB_200_2011/images/", "Animals_with_Attributes2/JPEGImages/", "VOCdevkit/", "ayahoo_test_images/",
           "images/")
PRETRAINED = "xlsa17:res101.mat (ImageNet, as shipped by the benchmark)"
_KEYS = ("features", "labels", "image_files")
_BLOCK_ROWS = 4096


def relative_image_id(path: str) -> str:
    """``path`` from ``res101.mat`` relative to its benchmark archive (see module doc)."""
    path = re.sub(r"/+", "/", path)
    for anchor in ANCHORS:
        at = ("/" + path).find("/" + anchor)
        if at >= 0:
            return path[at:]
    return path


def _load_res101(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; pass res101.mat from the xlsa17 archive")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=_KEYS)
    except NotImplementedError as e:
        raise PipelineError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it in MATLAB "
                            "with save(..., '-v7') or use the file from the xlsa17 archive") from e
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise PipelineError(f"{path}: cannot read as a MATLAB v5 file ({e}); pass res101.mat from xlsa17") from e
    missing = [k for k in _KEYS if k not in mat]
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; is this an xlsa17 res101.mat?")
    return mat


def import_xlsa17(
    res101: Path, att_splits: Path, output: Path, dataset: str | None = None, dtype: str = "float32"
) -> None:
    """Write the features, labels, image paths and splits of ``res101.mat`` to the store ``output``.

    Classes and splits come from ``att_splits.mat``; the dataset is named ``dataset`` or after
    the folder holding ``att_splits.mat`` (``.../CUB/att_splits.mat`` -> ``CUB``). ``output`` is
    replaced, via ``<output>.partial`` and a rename, only once every row is written.
    """
    res101, att_splits, output = Path(res101), Path(att_splits), Path(output)
    if dtype not in DTYPES:
        raise PipelineError(f"dtype {dtype!r} not supported; use one of {DTYPES}")
    meta = read_att_splits(att_splits)
    mat = _load_res101(res101)
    features = mat["features"]
    if features.ndim != 2 or features.dtype.kind not in "fiu":
        raise PipelineError(f"{res101}: features must be a numeric dim x N matrix, got {features.dtype} "
                            f"{features.shape}")
    labels, files = mat["labels"].ravel(), mat["image_files"].ravel()
    n, c = features.shape[1], len(meta["classes"])
    if not labels.size == len(files) == n:
        raise PipelineError(f"{res101}: features has {n} columns, labels {labels.size} and image_files "
                            f"{len(files)} entries; the counts must match (is features N x dim?)")
    if n and (labels.min() < 1 or labels.max() > c or not np.array_equal(labels, np.round(labels))):
        raise PipelineError(f"{res101}: labels span {labels.min()}..{labels.max()}, but {att_splits} has {c} "
                            "classes (1-based labels 1..C); pass the att_splits.mat of the same dataset")
    for name, idx in meta["splits"].items():
        if len(idx) and idx.max() >= n:
            raise PipelineError(f"{att_splits}: split {name} indexes row {idx.max() + 1} (1-based) but {res101} "
                                f"has {n} images; pass the att_splits.mat of the same dataset")
    bad = np.flatnonzero(~np.isfinite(features).all(axis=0))
    if len(bad):
        raise PipelineError(f"{res101}: non-finite features in {len(bad)} images (first: column {bad[0] + 1}); "
                            "the file is corrupt, download xlsa17 again")

    ds = ImageDataset(
        name=dataset or att_splits.resolve().parent.name,
        root=res101.parent,
        image_ids=[relative_image_id(str(np.ravel(f)[0])) for f in files],
        labels=labels.astype(np.int64) - 1,
        classes=meta["classes"],
        splits=meta["splits"],
    )
    provenance = {"backbone": "resnet101", "model": "resnet101", "pretrained": PRETRAINED, "image_size": 224,
                  "source": str(res101.resolve()), "splits_file": str(att_splits.resolve())}
    check_replaceable(output, "feature store")
    partial = output.with_name(output.name + ".partial")
    try:
        create_store(partial, ds, features.shape[0], dtype, None, provenance)
        with FeatureWriter(partial) as writer:
            for lo in range(0, n, _BLOCK_ROWS):
                hi = min(n, lo + _BLOCK_ROWS)
                writer.write(np.arange(lo, hi), features[:, lo:hi].T.astype(dtype))
            writer.finalize({})
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
