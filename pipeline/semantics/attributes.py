"""Class-attribute matrices from the benchmarks' files, a user table, or the synthetic dataset.

Sources: an xlsa17 ``att_splits.mat`` (``att``: L2-normalised per class as shipped, or
``original_att``), AwA2's ``binaryAtt_splits.mat``, a CSV/TSV table (header ``class,attr1,...``,
one row per class), or ``synthetic`` (the built-in dataset's own binary attributes).
Attribute names come with the table or the synthetic dataset; for the .mat files, from the
benchmark's name lists (``CUB_attributes.txt``, ``AWA2_predicates.txt``, ``SUN_attributes.mat``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.io

from pipeline.datasets.gbu import read_att_splits
from pipeline.datasets.synthetic import load_synthetic, synthetic_attributes
from pipeline.errors import PipelineError
from pipeline.safe_pickle import load_pickle
from pipeline.text_files import read_utf8

NORMALISATIONS = ("l2", "none")


@dataclass(frozen=True)
class ClassAttributes:
    """``values[c]`` is the attribute vector of ``classes[c]``; ``names`` name the columns."""

    classes: list[str]
    values: np.ndarray  # [C, A] float32
    names: list[str]
    source: str
    normalisation: str = "none"


def read_attributes(source: str, key: str = "att", names_file: Path | None = None,
                    data_root: Path | None = None) -> ClassAttributes:
    """Attributes in the source's own class order (see module doc for ``source``)."""
    if source == "synthetic":
        if data_root is None:
            raise PipelineError("attributes=synthetic needs the synthetic dataset root (data.root)")
        values, names = synthetic_attributes(data_root)
        return ClassAttributes(load_synthetic(data_root).classes, values, names, "synthetic")
    path = Path(source)
    if path.suffix == ".mat":
        attrs = _read_mat(path, key)
    elif path.suffix in (".csv", ".tsv"):
        attrs = _read_table(path)
    else:
        raise PipelineError(f"{source}: attributes must be 'synthetic', an xlsa17 .mat, or a .csv/.tsv table")
    if names_file is not None:
        names = read_attribute_names(names_file)
        if len(names) != attrs.values.shape[1]:
            raise PipelineError(f"{names_file}: {len(names)} names for {attrs.values.shape[1]} attributes of {path}")
        attrs = replace(attrs, names=names)
    return attrs


def _read_mat(path: Path, key: str) -> ClassAttributes:
    meta = read_att_splits(path)
    if key == "att":
        values = meta["att"]
    elif key == "original_att" and meta["original_att"] is not None:
        values = meta["original_att"]
    else:
        raise PipelineError(f"{path}: no attribute matrix {key!r}; use att or original_att")
    if not np.isfinite(values).all():
        raise PipelineError(f"{path}: {key} holds NaN or inf")
    names = [f"attribute_{i + 1}" for i in range(values.shape[1])]
    return ClassAttributes(meta["classes"], values.astype(np.float32), names, f"{path}:{key}")


def _read_table(path: Path) -> ClassAttributes:
    if not path.is_file():
        raise PipelineError(f"{path}: attribute table not found")
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",") if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise PipelineError(f"{path}: expected a header 'class,attr1,...' and one row per class")
    header, body = rows[0], rows[1:]
    try:
        values = np.array([[float(v) for v in row[1:]] for row in body], dtype=np.float32)
    except ValueError as e:
        raise PipelineError(f"{path}: non-numeric attribute value ({e})") from e
    if values.shape != (len(body), len(header) - 1) or not np.isfinite(values).all():
        raise PipelineError(f"{path}: every row needs {len(header) - 1} finite values")
    return ClassAttributes([row[0] for row in body], values, header[1:], str(path))


def read_attribute_names(path: Path) -> list[str]:
    """Attribute names from ``CUB_attributes.txt``/``AWA2_predicates.txt`` ("index name" lines) or
    ``SUN_attributes.mat``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: attribute name list not found")
    if path.suffix == ".mat":
        cells = scipy.io.loadmat(str(path))["attributes"].ravel()
        return [str(np.ravel(c)[0]) for c in cells]
    names = []
    for lineno, line in enumerate(read_utf8(path, "attribute name list").splitlines(), 1):
        if line.strip():
            fields = line.split(maxsplit=1)
            if len(fields) < 2:
                raise PipelineError(f"{path}:{lineno}: expected 'index name', got {line.strip()!r}")
            names.append(fields[1].strip())
    return names


def read_attribute_vectors(path: Path, n_attributes: int) -> np.ndarray:
    """Word vectors of attribute names from a pickled [A, E] array (e.g. MSDN's ``CUB_attribute.pkl``)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: attribute-name vectors not found")
    data = load_pickle(path)
    try:
        vectors = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{path}: holds {type(data).__name__}, not an [A, E] array of vectors ({e})") from None
    if vectors.ndim != 2 or vectors.shape[0] != n_attributes:
        raise PipelineError(f"{path}: shape {vectors.shape}, expected {n_attributes} attributes x dim")
    return vectors


def align(attrs: ClassAttributes, classes: list[str]) -> ClassAttributes:
    """Rows reordered to ``classes`` (the feature store's order); every class must be present."""
    index = {c: i for i, c in enumerate(attrs.classes)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise PipelineError(
            f"{attrs.source}: no attributes for {len(missing)} of the {len(classes)} feature-file classes "
            f"(first: {missing[0]!r}); is it the attribute file of this dataset?"
        )
    rows = [index[c] for c in classes]
    return replace(attrs, classes=list(classes), values=attrs.values[rows])


def normalise(attrs: ClassAttributes, how: str) -> ClassAttributes:
    """``l2``: each class vector scaled to unit norm (as the benchmarks ship ``att``); ``none``."""
    if how not in NORMALISATIONS:
        raise PipelineError(f"normalisation {how!r} unknown; use one of {NORMALISATIONS}")
    values = attrs.values
    if how == "l2":
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        if (norms == 0).any():
            raise PipelineError(f"{attrs.source}: a class has an all-zero attribute vector; use normalisation none")
        values = values / norms
    return replace(attrs, values=values.astype(np.float32), normalisation=how)
