"""Spatial (grid) features streamed from the feature store in bounded memory.

A CUB grid file at 14×14×2048 fp16 is ~9.5 GB, so attention models never load it: a
:class:`GridSource` names some rows of a store and yields mini-batches read in chunk-aligned
blocks, by a background thread that keeps ``prefetch`` blocks ahead of the compute (h5py reads
while torch computes with the GIL released). Memory: about ``(prefetch + 2) * block_rows`` rows.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store import FeatureStore

_DONE = object()


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

    def n_batches(self, batch_size: int, block_rows: int = 512) -> int:
        """How many batches one pass of :meth:`batches` yields (batches never span two blocks)."""
        blocks = _blocks(np.sort(self.rows), self.path, block_rows)
        return sum(-(-(hi - lo) // batch_size) for lo, hi in blocks)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, block_rows: int = 512,
                prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions into this source [B], float32 grid [B, R, D]) covering every row once.

        Without ``shuffle`` the order follows the store's rows; with it, the order of the
        chunk-aligned blocks and of the rows within each block is drawn from ``seed`` (reads stay
        sequential, batches still mix images from across a block).
        """
        order = np.argsort(self.rows, kind="stable")
        sorted_rows = self.rows[order]
        blocks = _blocks(sorted_rows, self.path, block_rows)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(blocks)
        out: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def read() -> None:
            try:
                with FeatureStore(self.path) as store:
                    for lo, hi in blocks:
                        block = _read(store, self.names, sorted_rows[lo:hi])
                        while not stop.is_set():
                            try:
                                out.put((lo, hi, block), timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                out.put(_DONE)
            except BaseException as e:  # hand any read error to the consumer
                out.put(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                lo, hi, grid = item
                positions = order[lo:hi]
                within = rng.permutation(hi - lo) if shuffle else np.arange(hi - lo)
                for start in range(0, hi - lo, batch_size):
                    pick = within[start : start + batch_size]
                    yield positions[pick], grid[pick]
        finally:
            stop.set()
            reader.join()


def _read(store: FeatureStore, names: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (ascending, inside one block) of the data sets ``names``, float32, joined along channels."""
    parts = [store.read_rows(name, rows) for name in names]
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
