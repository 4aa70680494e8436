"""Spatial (grid) features streamed from the feature store in bounded memory.

A CUB grid file at 14×14×2048 fp16 is ~9.5 GB, so attention models never load it: a
:class:`GridSource` names some rows of a store and yields mini-batches, in order (chunk-aligned
blocks, for embedding) or drawn anywhere (each batch a read of just its rows, for training), by a
background thread that keeps ``prefetch`` items ahead of the compute (h5py reads while torch
computes with the GIL released). Memory: a few blocks or batches, whatever the store's size.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline.store import FeatureStore

_DONE = object()
T = TypeVar("T")


@dataclass(frozen=True)
class GridSource:
    """Rows ``rows`` (store row indices, in this source's order) of the grid data sets ``names`` of
    ``path``: ``grid``, or with :meth:`with_mid` ``grid_mid`` and ``grid`` joined along channels."""

    path: Path
    rows: np.ndarray
    names: tuple[str, ...] = ("grid",)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def level_dims(self) -> tuple[int, ...]:
        """Channels of each data set of ``names``, in order."""
        with FeatureStore(self.path) as store:
            return tuple(store.dataset(name).shape[2] for name in self.names)

    @property
    def shape(self) -> tuple[int, int]:
        """(regions R, channels D) of one image; D sums ``level_dims``."""
        with FeatureStore(self.path) as store:
            return store.dataset("grid").shape[1], sum(store.dataset(name).shape[2] for name in self.names)

    @property
    def has_mid(self) -> bool:
        """Whether the store holds ``grid_mid`` (an earlier backbone stage on the same regions)."""
        with FeatureStore(self.path) as store:
            return store.has_mid_grid

    def with_mid(self) -> GridSource:
        """The same rows of ``grid_mid`` and ``grid``: batches are [B, R, D'' + D'], the earlier stage first."""
        return GridSource(self.path, self.rows, ("grid_mid", "grid"))

    def subset(self, positions: np.ndarray) -> GridSource:
        return GridSource(self.path, self.rows[positions], self.names)

    def concat(self, other: GridSource) -> GridSource:
        if other.path != self.path or other.names != self.names:
            raise ValueError(f"cannot join grids {self.names} of {self.path} and {other.names} of {other.path}")
        return GridSource(self.path, np.concatenate([self.rows, other.rows]), self.names)

    def batches(self, batch_size: int, block_rows: int = 512,
                prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions into this source [B], float32 grid [B, R, D]) covering every row once, in
        the store's row order (chunk-aligned blocks of ~``block_rows`` rows, read sequentially)."""
        order = np.argsort(self.rows, kind="stable")
        sorted_rows = self.rows[order]

        def read(store: FeatureStore) -> Iterator[tuple[int, int, np.ndarray]]:
            for lo, hi in _blocks(sorted_rows, self.path, block_rows):
                yield lo, hi, _read(store, self.names, sorted_rows[lo:hi])

        for lo, hi, grid in _prefetched(self.path, read, prefetch):
            for start in range(0, hi - lo, batch_size):
                yield order[lo + start : min(hi, lo + start + batch_size)], grid[start : start + batch_size]

    def draws(self, batches: list[np.ndarray], prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions, float32 grid [B, R, D]) for each array of positions into this source in
        ``batches`` (any rows, repeats allowed): each batch one read of just its rows, wherever they lie,
        so batches can be drawn from the whole source (random mini-batches) in bounded memory."""

        def read(store: FeatureStore) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for positions in batches:
                rows, inverse = np.unique(self.rows[positions], return_inverse=True)
                yield positions, _read(store, self.names, rows, scattered=True)[inverse]

        yield from _prefetched(self.path, read, prefetch)


def _prefetched(path: Path, read: Callable[[FeatureStore], Iterator[T]], prefetch: int) -> Iterator[T]:
    """The items of ``read(store)`` (``path`` open), produced by a background thread at most ``prefetch``
    items ahead of the consumer; a read error is raised in the consumer, and stopping early stops the thread."""
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            with FeatureStore(path) as store:
                for item in read(store):
                    while not stop.is_set():
                        try:
                            out.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            out.put(_DONE)
        except BaseException as e:  # hand any read error to the consumer
            out.put(e)

    reader = threading.Thread(target=produce, daemon=True)
    reader.start()
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _read(store: FeatureStore, names: tuple[str, ...], rows: np.ndarray, scattered: bool = False) -> np.ndarray:
    """Rows ``rows`` (ascending) of the data sets ``names``, float32, joined along channels: inside one
    block (one read of the range), or ``scattered`` anywhere (a read of just those rows)."""
    parts = [(store.read_each if scattered else store.read_rows)(name, rows) for name in names]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def _blocks(sorted_rows: np.ndarray, path: Path, block_rows: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ``sorted_rows`` each inside one span of ~``block_rows`` rows aligned to
    the chunks of ``grid`` (a multiple of its chunk rows: whole chunks are read)."""
    with FeatureStore(path) as store:
        chunk = store.chunk_rows("grid")
    span = chunk * max(1, block_rows // chunk)
    edges = np.flatnonzero(np.diff(sorted_rows // span)) + 1
    bounds = np.concatenate([[0], edges, [len(sorted_rows)]])
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
