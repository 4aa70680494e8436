"""Given class-name vectors (``text/vectors`` of a semantics file, ``vectors:PATH``): an array read from a
``.npy`` or a pickle (restricted loader), the names of its rows from a ``.txt``, pickle or JSON file, and
the rows matched to the classes by position or by name. Not an encoder: the vectors are read as they are
(SDL's ``wordvec_array.pickle`` for COCO and NUS-WIDE)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.safe_pickle import load_pickle
from pipeline.text_files import read_utf8


def read_vector_array(path: Path) -> np.ndarray:
    """A 2-D array from ``.npy`` or ``.pickle``/``.pkl`` (an ndarray, or a dict with one ndarray value).

    Leading size-1 axes are dropped (COCO's ``(1, 300, 80)`` -> ``(300, 80)``); the dtype is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"vectors:{path}: file not found; pass a .npy or .pickle array of class-name vectors")
    if path.suffix.lower() == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PipelineError(f"{path}: not a readable .npy array ({e})") from e
    elif path.suffix.lower() in (".pickle", ".pkl"):
        data = load_pickle(path)
        if isinstance(data, dict):
            arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
            if len(arrays) != 1:
                raise PipelineError(f"{path}: a dict with {len(arrays)} arrays ({', '.join(map(str, arrays))}); "
                                    "expected exactly one array of class-name vectors")
            data = next(iter(arrays.values()))
    else:
        raise PipelineError(f"{path}: unknown vector file type {path.suffix!r}; use .npy, .pickle or .pkl")
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.number):
        raise PipelineError(f"{path}: holds {type(data).__name__}, not a numeric array of class-name vectors")
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise PipelineError(f"{path}: array of shape {data.shape}; expected 2-D [classes, dim] or [dim, classes]")
    return data


def read_vector_names(path: Path) -> list[str]:
    """Names of a vector array's rows, in its order.

    ``.txt``: one per line; ``.pickle``/``.pkl``: a list, or a dict index -> name; ``.json``: a list,
    or a COCO annotation file (its ``categories`` sorted by id).
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"vector_names {path}: file not found; pass the names of the vectors' rows "
                            "(.txt, .pickle, .json)")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [s.strip() for s in read_utf8(path, "vector names").splitlines() if s.strip()]
    if suffix in (".pickle", ".pkl"):
        data = load_pickle(path)
    elif suffix == ".json":
        import json

        try:
            data = json.loads(read_utf8(path, "vector names"))
        except ValueError as e:
            raise PipelineError(f"{path}: not readable JSON ({e})") from e
        if isinstance(data, dict) and "categories" in data:
            data = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    else:
        raise PipelineError(f"{path}: unknown names file type {suffix!r}; use .txt, .pickle, .pkl or .json")
    if isinstance(data, dict):
        try:
            data = [data[i] for i in sorted(data, key=int)]
        except (TypeError, ValueError) as e:
            raise PipelineError(f"{path}: a dict of names must map indices 0..N-1 to names") from e
    if not isinstance(data, (list, tuple)) or not all(isinstance(n, str) for n in data):
        raise PipelineError(f"{path}: expected a list of names (or a dict index -> name)")
    return list(data)


def class_name_vectors(path: Path, classes: Sequence[str], names: Path | None = None
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """Given vectors of the class names -> (float32 [C, E] in ``classes`` order, provenance).

    The array of ``path`` (:func:`read_vector_array`) is [K, E] or [E, K], K = the number of
    ``names`` (:func:`read_vector_names`) or, without them, of ``classes``; [K, E] when both
    axes fit. Without ``names`` row i is class i; with them rows are matched to classes by name.
    """
    path = Path(path)
    array = read_vector_array(path)
    row_names = read_vector_names(names) if names is not None else None
    k = len(row_names) if row_names is not None else len(classes)
    what = f"{k} names in {names}" if names is not None else f"{k} classes"
    if array.shape[0] == k:
        values = array
    elif array.shape[1] == k:
        values = array.T
    else:
        hint = "" if names is not None else "; pass vector_names listing the array's names in its order"
        raise PipelineError(f"{path}: array of shape {array.shape} has no axis of the {what}{hint}")
    if row_names is not None:
        index: dict[str, int] = {}
        for i, n in enumerate(row_names):
            index.setdefault(n, i)  # a repeated name keeps its first vector
        missing = [c for c in classes if c not in index]
        if missing:
            raise PipelineError(f"{names}: no vector for {len(missing)} of {len(classes)} classes (first: "
                                f"{', '.join(map(repr, missing[:5]))})")
        values = values[[index[c] for c in classes]]
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise PipelineError(f"{path}: non-finite values in the class vectors; fix or regenerate the file")
    meta = {"encoder": "vectors", "source": str(path), "shape": list(array.shape), "dtype": str(array.dtype),
            "dim": values.shape[1]}
    return values, meta if names is None else {**meta, "vector_names": str(names)}
