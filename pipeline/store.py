"""The HDF5 feature store: one file per (dataset, backbone), written once, read by every stage.

Schema (``schema_version`` 2; version 1 files are read too), N images, C classes::

    features        [N, D]      float16|float32  pooled image features (NaN rows: failed images)
    grid            [N, R, D']  float16|float32  optional spatial features, R regions (h*w)
    grid_mid        [N, R, D''] float16|float32  optional spatial features of an earlier backbone
                                                 stage on the same R regions (multi-level fusion)
    labels          [N]         int64            class index into ``classes``, -1 if unknown
    image_ids       [N]         utf-8            image path relative to the dataset root
    classes         [C]         utf-8            class names (folder names, wnids, ...)
    ok              [N]         bool             row holds features of a successfully read image
    complete        [1]         uint8            1 once every row is written or recorded as failed
    splits/<name>   [n]         int64            sorted 0-based row indices (trainval, train, val,
                                                 test_seen, test_unseen); readers drop failed rows
    failures/index  [F]         int64            the first failed rows (a complete store's rows with
                                                 ``ok`` False, ascending) ...
    failures/reason [F]         S240             ... and why (UTF-8, truncated); F = min(N, max(1000,
                                                 N / 100)) slots, the first ``(~ok).sum()`` of them used
    head/weight     [K, D]      float32          optional: the backbone's own classifier on the pooled
    head/bias       [K]         float32          features (ImageNet-1K weights: K = 1000) ...
    head/classes    [K]         utf-8            ... and what each output means (wnids)
    seen_classes    [S]         int64            optional: sorted class indices of every training
                                                 class of the protocol, images here or not (ImageNet:
                                                 the 1000 ILSVRC classes); absent: those of trainval

Multi-label stores (NUS-WIDE, COCO, tag tables) also hold, with ``labels`` all -1 and the
splits ``trainval`` and ``test``::

    tags            [N, ceil(C/8)] uint8         packed bool [N, C]: image shows class (tag) c;
                                                 ``np.packbits(tags, axis=1, bitorder="little")``
    unseen_tags     [U]         int64            sorted class indices never used in training

File attributes hold provenance (``backbone``, ``model``, ``pretrained``, ``image_size``,
``resize_size``, ``interpolation``, ``mean``, ``std``, ``feature_dim``, ``grid_shape``,
``dtype``, ``dataset``, ``versions``) and ``schema_version``. Every data set exists from creation,
chunked along rows and allocated in full, so that writing a batch *and finishing the store* only
fill raw bytes, never change the file's structure: a process killed (or a disk filling up) at any
instant leaves a readable file whose ``ok`` mask says which rows are finished and whose
``complete`` byte, written last, says whether it was finished. (Version 1 restructured the file
when finishing: a crash there could make the whole file unreadable.) A store joined over the shards
of a multi-process extraction (:mod:`pipeline.distributed`) may hold ``features`` / ``grid`` /
``grid_mid`` as HDF5 virtual data sets reading the shard files next to it; everything else is its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.choices import DTYPES
from pipeline.datasets.base import SPLIT_NAMES, ImageDataset, check_seen_classes
from pipeline.errors import PipelineError
from pipeline.head import Head
from pipeline.hdf5 import create_unbuffered, decoded, open_for_reading, strings

SCHEMA_VERSION = 2
_READABLE_SCHEMAS = (1, 2)
REASON_BYTES = 240  # failure reasons are stored truncated to this many UTF-8 bytes
_CHUNK_BYTES = 1 << 21  # ~2 MiB per chunk: large sequential reads, small waste on partial reads
_REQUIRED = ("features", "labels", "image_ids", "classes", "ok")
_STR = h5py.string_dtype("utf-8")


def _rows_per_chunk(row_shape: tuple[int, ...], dtype: str, n: int) -> int:
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return int(max(1, min(n, _CHUNK_BYTES // row_bytes)))


def _virtual(f: h5py.File, name: str, shape: tuple[int, ...], dtype: str, shards: Sequence[Shard]) -> None:
    """Data set ``name`` as a virtual one: rows ``[start, stop)`` of each shard are its data set ``name``
    (missing rows read NaN)."""
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    for shard in shards:
        layout[shard.start:shard.stop] = h5py.VirtualSource(shard.file, name, shape=(shard.stop - shard.start,
                                                                                    *shape[1:]))
    f.create_virtual_dataset(name, layout, fillvalue=np.nan)


def _allocated(f: h5py.File, name: str, shape: tuple[int, ...], dtype: str) -> h5py.Dataset:
    """A chunked data set whose chunks are all allocated now and never filled with zeros."""
    chunks = (_rows_per_chunk(shape[1:], dtype, shape[0]), *shape[1:])
    space = h5py.h5s.create_simple(shape)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk(chunks)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    plist.set_obj_track_times(False)  # no creation times: the same features give the same file bytes
    dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=plist)
    return h5py.Dataset(dsid)


def create_store(
    path: Path,
    dataset: ImageDataset,
    feature_dim: int,
    dtype: str,
    grid_shape: tuple[int, int] | None,
    provenance: Mapping[str, Any],
    mid_grid_shape: tuple[int, int] | None = None,
    head: Head | None = None,
    shards: Sequence[Shard] = (),
) -> None:
    """Create an empty store for ``dataset`` (all rows pending); overwrites ``path``.

    ``grid_shape`` is (regions, channels) of the spatial features, or None for pooled only;
    ``mid_grid_shape`` that of an earlier stage's (``grid_mid``), or None; ``head`` the backbone's
    classifier on the pooled features, or None. With ``shards`` (stores of consecutive row ranges,
    covering every row), ``features`` / ``grid`` / ``grid_mid`` are HDF5 virtual data sets that read
    the shards' own, which must stay where they are (a joined store, :mod:`pipeline.distributed`).
    The file is built under a temporary name and renamed, so ``path`` never exists half-made.
    """
    if dtype not in DTYPES:
        raise PipelineError(f"dtype {dtype!r} not supported; use one of {DTYPES}")
    building = path.with_name(path.name + ".creating")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with create_unbuffered(building) as f:
            _fill_empty_store(f, dataset, feature_dim, dtype, grid_shape, provenance, mid_grid_shape, shards)
            if head is not None:
                if head.weight.shape != (len(head.classes), feature_dim) or head.bias.shape != (len(head.classes),):
                    raise PipelineError(f"classifier head {head.weight.shape} does not fit {feature_dim}-d features")
                f["head/weight"] = np.asarray(head.weight, np.float32)
                f["head/bias"] = np.asarray(head.bias, np.float32)
                f.create_dataset("head/classes", data=head.classes, dtype=_STR)
            f.flush()  # a failed write raises here; HDF5 would only print it when the file is closed
        with open(building, "rb") as raw:
            os.fsync(raw.fileno())
        _check_created(building, dataset, feature_dim, head)
    except BaseException as e:
        with contextlib.suppress(OSError):
            building.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            raise PipelineError(f"{path}: cannot create the feature store ({_write_error(e)}); choose a writable "
                                "output folder with room for it") from None
        raise
    building.replace(path)


def _check_created(path: Path, dataset: ImageDataset, feature_dim: int, head: Head | None) -> None:
    """Read a just-created store back and compare it with what was written: HDF5 reports some failed
    writes (a full disk while its metadata is flushed) only as ignored errors, leaving a file that opens
    but holds other rows, names or splits. Raises OSError naming what differs."""
    expected: dict[str, np.ndarray | list[str]] = {
        "labels": dataset.labels.astype(np.int64), "image_ids": dataset.image_ids, "classes": dataset.classes,
        **{f"splits/{name}": np.asarray(idx, dtype=np.int64) for name, idx in dataset.splits.items()}}
    if dataset.seen_classes is not None:
        expected["seen_classes"] = np.asarray(dataset.seen_classes, dtype=np.int64)
    if dataset.tags is not None:
        expected["tags"] = np.packbits(dataset.tags, axis=1, bitorder="little")
        expected["unseen_tags"] = np.asarray(dataset.unseen_tags, dtype=np.int64)
    if head is not None:
        expected.update({"head/weight": np.asarray(head.weight, np.float32),
                         "head/bias": np.asarray(head.bias, np.float32), "head/classes": list(head.classes)})
    try:
        with h5py.File(path, "r") as f:
            differs = [name for name, value in expected.items() if name not in f or not (
                strings(f[name]) == value if isinstance(value, list) else np.array_equal(f[name][:], value))]
            n = len(dataset)
            if f.attrs.get("schema_version") != SCHEMA_VERSION or f.attrs.get("feature_dim") != feature_dim:
                differs.append("attributes")
            if f["ok"].shape != (n,) or f["ok"][:].any() or f["complete"][0] != 0 or f["features"].shape[0] != n:
                differs.append("ok / complete / features")
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise OSError(f"the new file does not read back: {_write_error(e)}") from None
    if differs:
        raise OSError(f"the new file reads back other {', '.join(differs)} than were written (a write was lost)")


def _fill_empty_store(
    f: h5py.File,
    dataset: ImageDataset,
    feature_dim: int,
    dtype: str,
    grid_shape: tuple[int, int] | None,
    provenance: Mapping[str, Any],
    mid_grid_shape: tuple[int, int] | None,
    shards: Sequence[Shard],
) -> None:
    n = len(dataset)
    if mid_grid_shape is not None and (grid_shape is None or mid_grid_shape[0] != grid_shape[0]):
        raise PipelineError(f"grid_mid {mid_grid_shape} needs a grid of the same regions, got {grid_shape}")
    for name, shape in (("features", (feature_dim,)), ("grid", grid_shape), ("grid_mid", mid_grid_shape)):
        if shape is not None:
            if shards:
                _virtual(f, name, (n, *shape), dtype, shards)
            else:
                _allocated(f, name, (n, *shape), dtype)
    ok = _allocated(f, "ok", (n,), "bool")
    ok[...] = False
    _allocated(f, "complete", (1,), "uint8")[...] = 0
    slots = min(n, max(1000, n // 100))
    f.create_group("failures")
    _allocated(f, "failures/index", (slots,), "int64")
    _allocated(f, "failures/reason", (slots,), f"S{REASON_BYTES}")
    f["labels"] = dataset.labels.astype(np.int64)
    f.create_dataset("image_ids", data=dataset.image_ids, dtype=_STR)
    f.create_dataset("classes", data=dataset.classes, dtype=_STR)
    for name, idx in dataset.splits.items():
        f[f"splits/{name}"] = np.asarray(idx, dtype=np.int64)
    if dataset.seen_classes is not None:
        f["seen_classes"] = np.asarray(dataset.seen_classes, dtype=np.int64)
    if dataset.tags is not None:
        f.create_dataset("tags", data=np.packbits(dataset.tags, axis=1, bitorder="little"),
                         chunks=True, compression="gzip", compression_opts=1, shuffle=True)
        f["unseen_tags"] = np.asarray(dataset.unseen_tags, dtype=np.int64)
    for key, value in provenance.items():
        f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
    f.attrs["dataset"] = dataset.name
    f.attrs["feature_dim"] = feature_dim
    f.attrs["grid_shape"] = list(grid_shape) if grid_shape is not None else []
    f.attrs["mid_grid_shape"] = list(mid_grid_shape) if mid_grid_shape is not None else []
    f.attrs["dtype"] = dtype
    f.attrs["schema_version"] = SCHEMA_VERSION


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a store held by the store ``file`` (a path relative to the store's folder)."""

    start: int
    stop: int
    file: str


class FeatureWriter:
    """Fills the rows of a store created by :func:`create_store`; use as a context manager."""

    def __init__(self, path: Path):
        self.path = path
        # No chunk cache: each write goes straight to its allocated place in the file, so the
        # ``ok`` flags written after the features can never reach the disk before them.
        with self._disk_errors():
            self._f = h5py.File(path, "r+", rdcc_nbytes=0)
        _check_schema(self._f, path, writable=True)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._disk_errors():
            self._f.close()

    def pending(self) -> np.ndarray:
        """Indices of rows not yet written, ascending."""
        return np.flatnonzero(~self._f["ok"][:])

    def write(self, indices: np.ndarray, features: np.ndarray, grid: np.ndarray | None = None,
              mid: np.ndarray | None = None) -> None:
        """Write rows ``indices`` (features, and ``grid`` / ``grid_mid`` rows) and mark them finished."""
        if not np.isfinite(features).all():
            raise PipelineError(f"{self.path}: non-finite features for rows {indices[:5]}; check the backbone's input")
        order = np.argsort(indices)
        if not np.array_equal(order, np.arange(len(order))):
            indices, features = indices[order], features[order]
            grid = grid[order] if grid is not None else None
            mid = mid[order] if mid is not None else None
        sel = _selection(indices)
        with self._disk_errors():
            self._f["features"][sel] = features
            for name, rows in (("grid", grid), ("grid_mid", mid)):
                if rows is not None:
                    self._f[name][sel] = rows
            self._f.flush()
            self._f["ok"][sel] = True
            self._f.flush()

    def mark_written(self, indices: np.ndarray) -> None:
        """Mark rows ``indices`` finished whose data is already in place (a joined store's shards)."""
        with self._disk_errors():
            self._f["ok"][np.sort(indices)] = True
            self._f.flush()

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """A failed write (full disk, I/O error) as one line: the rows finished before it are kept."""
        try:
            yield
        except (OSError, RuntimeError) as e:  # HDF5 reports some failed writes (e.g. on close) as RuntimeError
            raise PipelineError(f"{self.path}: cannot write ({_write_error(e)}); the rows finished so far are kept: "
                                "make room and rerun the same command to resume") from None

    def finalize(self, failures: Mapping[int, str]) -> None:
        """Record unreadable images (rows filled with NaN, reasons in the failure slots) and mark the
        store complete. Only raw bytes of existing data sets are written, the ``complete`` byte last,
        so a crash at any instant leaves the file readable and a rerun finishes it."""
        idx = np.array(sorted(failures), dtype=np.int64)
        f = self._f
        missing = np.flatnonzero(~f["ok"][:])
        if not np.array_equal(missing, idx):
            raise PipelineError(f"{self.path}: {len(missing)} rows unwritten but {len(idx)} failures recorded")
        with self._disk_errors():
            for name in ("features", "grid", "grid_mid"):
                if name in f and not f[name].is_virtual and len(idx):  # a virtual one reads its shards' NaN
                    f[name][idx] = np.nan
            recorded = idx[:len(f["failures/index"])]
            if len(recorded):
                f["failures/index"][:len(recorded)] = recorded
                f["failures/reason"][:len(recorded)] = np.array([_truncated(failures[i]) for i in recorded],
                                                                dtype=f"S{REASON_BYTES}")
            f.flush()
            f["complete"][0] = 1
            f.flush()


def _write_error(e: Exception) -> str:
    """The reason of a failed write: the OS's message (``No space left on device``) when there is one."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    found = re.search(r"error message = '([^']+)'", str(e))
    return found.group(1) if found else (str(e).strip().splitlines() or [type(e).__name__])[0]


def _truncated(reason: str) -> bytes:
    """``reason`` as at most :data:`REASON_BYTES` bytes of UTF-8 (cut at a character boundary)."""
    return reason.encode()[:REASON_BYTES].decode("utf-8", "ignore").encode()


def _selection(indices: np.ndarray) -> slice | np.ndarray:
    """A slice when ``indices`` are consecutive (fast path), else the index array."""
    if len(indices) and indices[-1] - indices[0] == len(indices) - 1:
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def _check_schema(f: h5py.File, path: Path, writable: bool = False) -> None:
    missing = [k for k in _REQUIRED if k not in f]
    if missing and "class_texts" in f:
        raise PipelineError(f"{path}: a semantics file (made by python cli.py semantics), not a feature store; "
                            "give the feature file made by python cli.py extract")
    version = f.attrs.get("schema_version")
    if missing or version not in _READABLE_SCHEMAS:
        raise PipelineError(
            f"{path}: not a feature store of schema {SCHEMA_VERSION} (missing {missing or 'schema_version'}); "
            "recreate it with: python cli.py extract ..."
        )
    if writable and version != SCHEMA_VERSION:
        raise PipelineError(f"{path}: a store of schema {version}, written by an older version, cannot be "
                            "resumed; delete it and extract again")


class FeatureStore:
    """Read access to a store; arrays are read lazily, ``grid`` only ever in row blocks."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._f = open_for_reading(self.path, "feature file", "zsl extract ...")
        _check_schema(self._f, self.path)
        self._check_shards()

    def _check_shards(self) -> None:
        """Only ``features`` / ``grid`` / ``grid_mid`` may read other files, and only shard files inside the
        store's folder (a crafted store could read any local file as its image ids); virtual data sets read
        NaN where a shard file is missing: refuse that instead."""
        folder = self.path.parent.resolve()
        outside: list[str] = []

        def visit(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset) and (item.external or (item.is_virtual and (
                    name not in ("features", "grid", "grid_mid") or any(
                        not (folder / s.file_name).resolve().is_relative_to(folder) for s in item.virtual_sources())))):
                outside.append(name)

        self._f.visititems(visit)
        if outside:
            self.close()
            raise PipelineError(f"{self.path}: its {', '.join(outside)} would read files outside the store (external "
                                "or virtual storage); this package never writes such a store: re-extract it")
        for name in ("features", "grid", "grid_mid"):
            if name in self._f and self._f[name].is_virtual:
                for source in self._f[name].virtual_sources():
                    if not (self.path.parent / source.file_name).is_file():
                        self.close()
                        raise PipelineError(f"{self.path}: its {name} are read from shard files, and "
                                            f"{self.path.parent / source.file_name} is missing; keep "
                                            f"{self.path.name}.shards next to it (or extract with --merge)")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def __len__(self) -> int:
        return int(self._f["labels"].shape[0])

    @property
    def complete(self) -> bool:
        if "complete" in self._f:
            return bool(self._f["complete"][0])
        return bool(self._f.attrs["complete"])  # schema 1

    @property
    def provenance(self) -> dict[str, Any]:
        """All file attributes, arrays as lists and JSON-encoded lists and dicts decoded."""
        return decoded(self._f.attrs)

    @property
    def classes(self) -> list[str]:
        return strings(self._f["classes"])

    @property
    def image_ids(self) -> list[str]:
        return strings(self._f["image_ids"])

    @property
    def labels(self) -> np.ndarray:
        return self._f["labels"][:]

    @property
    def ok(self) -> np.ndarray:
        return self._f["ok"][:]

    @property
    def multilabel(self) -> bool:
        return "tags" in self._f

    @property
    def tags(self) -> np.ndarray | None:
        """[N, C] bool tag matrix of a multi-label store, else None."""
        if "tags" not in self._f:
            return None
        packed = self._f["tags"][:]
        return np.unpackbits(packed, axis=1, count=len(self._f["classes"]), bitorder="little").astype(bool)

    @property
    def unseen_tags(self) -> np.ndarray | None:
        """Sorted class indices of the unseen tags of a multi-label store, else None."""
        return self._f["unseen_tags"][:] if "unseen_tags" in self._f else None

    @property
    def seen_classes(self) -> np.ndarray | None:
        """Sorted class indices of every training class of the protocol, images here or not, when the
        dataset names them (ImageNet's split file), else None (the classes of ``trainval``)."""
        if "seen_classes" not in self._f:
            return None
        seen = self._f["seen_classes"][:]
        check_seen_classes(str(self.path), seen, self.labels, self.splits, len(self._f["classes"]))
        return seen

    @property
    def head(self) -> Head | None:
        """The backbone's own classifier on the pooled features, when extraction recorded one."""
        if "head" not in self._f:
            return None
        return Head(self._f["head/weight"][:], self._f["head/bias"][:],
                    strings(self._f["head/classes"]))

    @property
    def has_grid(self) -> bool:
        return "grid" in self._f

    @property
    def has_mid_grid(self) -> bool:
        """Whether the store holds ``grid_mid``, an earlier stage's grid (``extract --mid-grid``)."""
        return "grid_mid" in self._f

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """Row indices of each split; in a complete store, rows of failed images are left out."""
        group = self._f.get("splits", {})
        splits = {name: group[name][:] for name in SPLIT_NAMES if name in group}
        for name, idx in splits.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
                raise PipelineError(f"{self.path}: split {name} holds row indices outside 0..{len(self) - 1}; "
                                    "re-extract the features")
        if self.complete:
            ok = self.ok
            splits = {name: idx[ok[idx]] for name, idx in splits.items()}
        return splits

    @property
    def failures(self) -> dict[int, str]:
        """{row: reason} of the images that could not be read (a complete store's rows without features)."""
        if not self.complete or "failures" not in self._f:
            return {}
        failed = np.flatnonzero(~self.ok)
        slots = len(self._f["failures/index"])
        reasons = dict(zip(self._f["failures/index"][:min(slots, len(failed))].tolist(),
                           self._f["failures/reason"][:min(slots, len(failed))]))
        return {int(i): reasons[i].decode("utf-8", "replace") if i in reasons
                else f"reason not recorded (only the first {slots} failures are)" for i in failed}

    def chunk_rows(self, name: str) -> int:
        """Rows per chunk of data set ``name``; a virtual one (a store joined over shards, which keep
        their own chunks) reports the chunk rows a store of its shape is written with."""
        data = self.dataset(name)
        return data.chunks[0] if data.chunks else _rows_per_chunk(data.shape[1:], data.dtype.str, data.shape[0])

    def dataset(self, name: str) -> h5py.Dataset:
        """The raw h5py data set ``name`` (``features`` or ``grid``), for custom slicing."""
        if name not in self._f:
            flags = "--grid --mid-grid" if name == "grid_mid" else "--grid"
            raise PipelineError(f"{self.path}: no {name!r} data set; extract with {flags} to store spatial features")
        return self._f[name]

    def features(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Pooled features as float32: rows ``indices`` (default: every finished row)."""
        if indices is None:
            indices = np.flatnonzero(self.ok)
        blocks = [block for _, block in self.iter_rows("features", indices)]
        return np.concatenate(blocks) if blocks else np.empty((0, self._f["features"].shape[1]), np.float32)

    def iter_rows(
        self, name: str, indices: np.ndarray | None = None, batch_rows: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream rows of ``name`` as (row indices, float32 block), in ascending row order.

        Reads whole chunk-aligned row ranges (``batch_rows`` rounded up to the chunk size,
        default one chunk) and selects ``indices`` within each, so memory stays bounded by one
        block however large the data set is.
        """
        data = self.dataset(name)
        n = data.shape[0]
        rows = np.arange(n) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= n):
            raise PipelineError(f"{self.path}: row indices outside 0..{n - 1}")
        chunk = self.chunk_rows(name)
        step = chunk * max(1, -(-(batch_rows or chunk) // chunk))
        for start in range(0, n, step):
            lo, hi = np.searchsorted(rows, [start, start + step])
            if lo == hi:
                continue
            yield rows[lo:hi], self.read_rows(name, rows[lo:hi])

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (ascending) of ``name`` as float32, by one read of the range they span;
        keep the range small (:meth:`iter_rows` streams large selections)."""
        block = self.dataset(name)[int(rows[0]) : int(rows[-1]) + 1]
        return block[rows - rows[0]].astype(np.float32, copy=False)

    def read_each(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (ascending, distinct, anywhere) of ``name`` as float32, reading just those rows: one
        slice per run of consecutive rows (h5py's list indexing is ~15× slower on scattered rows)."""
        data = self.dataset(name)
        out = np.empty((len(rows), *data.shape[1:]), np.float32)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # the first position of each run
        for lo, hi in zip(starts, [*starts[1:], len(rows)]):
            out[lo:hi] = data[rows[lo]:rows[hi - 1] + 1]
        return out

    def shard_files(self) -> list[str]:
        """File names of the shards its virtual data sets read (in ``OUTPUT.shards``); [] when self-contained."""
        return sorted({Path(source.file_name).name for name in ("features", "grid", "grid_mid")
                       if name in self._f and self._f[name].is_virtual for source in self._f[name].virtual_sources()})

    def describe(self) -> str:
        """Human-readable schema, split counts, provenance and completeness (``cli.py info``)."""
        lines = [f"{self.path}", f"  complete: {self.complete}"]
        for name in ("features", "grid", "grid_mid", "labels", "tags", "image_ids", "classes", "ok", "head/weight"):
            if name in self._f:
                d = self._f[name]
                files = sorted({source.file_name for source in d.virtual_sources()}) if d.is_virtual else []
                over = f"  virtual, over {len(files)} shards: {', '.join(files[:2])}{' ...' * (len(files) > 2)}"
                lines.append(f"  {name:10s} {str(d.shape):22s} {d.dtype}{over if files else ''}")
        ok = self.ok
        lines.append(f"  rows: {len(ok)} total, {int(ok.sum())} written, {len(self.failures)} failed")
        tags = self.tags
        for name, idx in self.splits.items():
            if tags is None:
                lines.append(f"  split {name:12s} {len(idx):8d} images {len(np.unique(self.labels[idx])):6d} classes")
            else:
                lines.append(f"  split {name:12s} {len(idx):8d} images {int(tags[idx].any(0).sum()):6d} tags, "
                             f"{tags[idx].sum(1).mean():.2f} per image")
        if tags is not None:
            lines.append(f"  tags: {tags.shape[1]} ({tags.shape[1] - len(self.unseen_tags)} seen, "
                         f"{len(self.unseen_tags)} unseen)")
        lines.append("  provenance:")
        for key, value in sorted(self.provenance.items()):
            lines.append(f"    {key}: {value}")
        image_ids = self._f["image_ids"]
        for i, reason in list(self.failures.items())[:10]:
            lines.append(f"  failed: {image_ids[i].decode()}: {reason}")
        return "\n".join(lines)
