"""Reading the package's HDF5 files (feature stores, semantics files): opening with one-line errors and
decoding attributes."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import PipelineError


def open_for_reading(path: Path, kind: str, make: str) -> h5py.File:
    """``path`` opened read-only; a missing file or one HDF5 cannot read is a one-line error naming the
    ``kind`` of file and the command that ``make``s it."""
    if not path.is_file():
        raise PipelineError(f"{path}: {kind} not found; create it with: {make}")
    try:
        # no chunk cache: a read of a few rows then reads just those rows. With HDF5's 1 MiB cache, smaller
        # than a store's ~2 MiB chunks, every row read its whole chunk (a random 64-row batch of CUB's 7x7
        # grid: 126 MB read for the 8 MB needed, 0.035 s against 0.002 s)
        return h5py.File(path, "r", rdcc_nbytes=0)
    except OSError as e:
        foreign = not_hdf5(path)
        if foreign:  # another kind of file given by mistake: not ours to delete
            raise PipelineError(f"{path}: {foreign}; pass a {kind} here, made by: {make}") from e
        raise PipelineError(f"{path}: not a readable HDF5 file ({e}); delete it and run again: {make}") from e


def not_hdf5(path: Path) -> str | None:
    """What the file at ``path`` is when it is not HDF5 ("not an HDF5 file (a zip archive: a model file
    from zsl train?)"), for an error to say; None for an HDF5 file."""
    if h5py.is_hdf5(path):
        return None
    return "not an HDF5 file" + (" (a zip archive: a model file from zsl train?)" if zipfile.is_zipfile(path) else "")


def create_unbuffered(path: Path) -> h5py.File:
    """A new HDF5 file at ``path`` (truncated if there) whose writes of data reach the disk when they are
    made. HDF5 keeps small ones (in its sieve buffer and chunk cache) until the data set is closed, and a
    write that fails there (a full disk) is only printed, leaving a data set whose cleanup at exit
    crashes the process; unbuffered, the failure raises at the write, as an OSError."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # h5py.File's default
    fapl.set_sieve_buf_size(0)
    metadata_entries, _, _, w0 = fapl.get_cache()
    fapl.set_cache(metadata_entries, 0, 0, w0)  # no chunk cache
    return h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fapl=fapl))


def decoded(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """Attributes as plain Python: arrays as lists, numpy scalars as numbers, JSON-encoded lists and dicts
    decoded."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and value[:1] in ("[", "{"):
            value = json.loads(value)
        out[key] = value
    return out


def strings(dataset: h5py.Dataset) -> list[str]:
    """A dataset of UTF-8 byte strings as Python strings."""
    return [s.decode() for s in dataset[:]]
