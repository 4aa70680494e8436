"""Extraction by name (:func:`extract_dataset`, what the CLI, the DVC stage and the API run), in one
process or across processes, GPUs and machines under torchrun: one shard of the image list per rank,
joined by rank 0 into the one store every later stage reads.

    torchrun --nproc-per-node 8 cli.py extract ... --output features/in21k.h5              # one node
    srun torchrun --nnodes $N --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $HEAD:29500 cli.py extract ... --output /shared/in21k.h5          # Slurm

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Rank r of W extracts the rows
``[r·B, (r+1)·B)`` of the image list (B: N / W rounded up to a multiple of the batch size, so every
batch holds the images it holds in a single-process run; a ``webdataset`` is split by tar shards
instead, each rank listing only its own) on its own GPU (``cuda:LOCAL_RANK``) into
``OUTPUT.shards/<stem>-r-of-W.h5``, with every guarantee of :func:`pipeline.extract.extract`: resume
after a kill, failures recorded, a lock per shard, a progress bar per rank. A process group (NCCL on
GPUs, Gloo on CPUs) waits for every shard; rank 0 then joins them into ``OUTPUT``, with the schema,
provenance, splits and failures of a single-process run: by default its features are HDF5 virtual
data sets over the shards (no copy; the shards must stay in ``OUTPUT.shards`` on a filesystem that
every reader mounts), with ``merge`` a self-contained copy. The joined store is built under a
temporary name and renamed. A rerun redoes only what is unfinished; shards of another world size
are not reused (their row ranges differ), and the log says so.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.backbones import Backbone, load_backbone
from pipeline.config import ExtractConfig
from pipeline.datasets import load_dataset
from pipeline.datasets.base import ImageDataset
from pipeline.datasets.webdataset import load_webdataset, webdataset_from_rows
from pipeline.errors import PipelineError
from pipeline.device import resolve_device
from pipeline.extract import (ExtractResult, batch_size_for, extract, failure_limit, finished, output_lock,
                              store_provenance)
from pipeline.outputs import check_replaceable
from pipeline.store import FeatureStore, FeatureWriter, Shard, create_store

log = logging.getLogger(__name__)
WAIT = timedelta(days=2)  # how long finished ranks wait for the slowest shard (torchrun stops all on a crash)


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local: int


def launched_rank() -> Rank | None:
    """The rank of this process under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); None when it
    runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def shard_rows(n: int, world: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` rows of each of ``world`` shards of ``n`` images: consecutive blocks of
    ``ceil(n / world)`` rounded up to a multiple of ``batch_size`` (the last ones may be short or empty)."""
    block = -(-max(n, 1) // world)
    block = -(-block // batch_size) * batch_size
    return [(min(r * block, n), min((r + 1) * block, n)) for r in range(world)]


def shard_path(output: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` keeps its shard of ``output``."""
    return output.with_name(output.name + ".shards") / f"{output.stem}-{rank}-of-{world}.h5"


def subset_rows(dataset: ImageDataset, start: int, stop: int) -> ImageDataset:
    """Rows ``[start, stop)`` of ``dataset`` as a dataset of their own (no splits: the joined store has them)."""
    return replace(dataset, image_ids=dataset.image_ids[start:stop], labels=dataset.labels[start:stop], splits={},
                   tags=None if dataset.tags is None else dataset.tags[start:stop],
                   members=None if dataset.members is None else dataset.members[start:stop])


def extract_dataset(dataset: str, root: Path, splits: Path | None, output: Path, cfg: ExtractConfig,
                    overwrite: bool = False) -> ExtractResult:
    """Load dataset and backbone by name, then :func:`~pipeline.extract.extract` with ``cfg``'s options;
    under torchrun with several processes, :func:`extract_distributed` (``cfg.merge``: a self-contained
    joined store instead of virtual data sets over the shards). What the CLI, the DVC stage and the Python
    API run."""
    check_replaceable(output, "feature store")  # before the backbone loads
    net = load_backbone(cfg.backbone, cfg.pretrained, cfg.image_size)
    options = {**cfg.options(), "overwrite": overwrite}
    rank = launched_rank()
    if rank is None:
        return extract(load_dataset(dataset, root, splits), net, output, **options)
    if dataset.lower() == "webdataset":  # this rank lists its own tar shards only
        part = load_webdataset(root, splits, part=(rank.rank, rank.world))
        shards = [shard_path(output, r, rank.world) for r in range(rank.world)]
        return extract_distributed(part, lambda: webdataset_from_rows(root, *_stored_rows(shards), splits), net, output,
                                   rank, merge=cfg.merge, **options)
    data = load_dataset(dataset, root, splits)
    done = finished(output, store_provenance(data, net, cfg.dtype, cfg.grid, options["mid_grid"]), overwrite)
    if done is not None:  # whatever number of processes wrote it: nothing to recompute
        return done
    # every rank's batch size, so that each batch holds the images it holds in one process
    options["batch_size"] = batch_size_for(cfg.batch_size, resolve_device(cfg.device), net.preprocess.image_size)
    start, stop = shard_rows(len(data), rank.world, options["batch_size"])[rank.rank]
    return extract_distributed(subset_rows(data, start, stop), lambda: data, net, output, rank, merge=cfg.merge,
                               **options)


def _stored_rows(shards: list[Path]) -> tuple[list[str], np.ndarray]:
    """The image ids and labels of the finished ``shards``, in order."""
    ids: list[str] = []
    labels = []
    for shard in shards:
        with FeatureStore(shard) as store:
            ids += store.image_ids
            labels.append(store.labels)
    return ids, np.concatenate(labels)


def extract_distributed(part: ImageDataset, whole: Callable[[], ImageDataset], backbone: Backbone, output: Path,
                        rank: Rank, *, merge: bool = False, **options: Any) -> ExtractResult:
    """:func:`pipeline.extract.extract` of this rank's ``part`` of the dataset into its shard (``options``:
    its keywords; on CUDA the device is ``cuda:LOCAL_RANK``, whatever GPU ``device`` names), then, on
    rank 0, :func:`join_shards` into the store of ``whole()`` (the parts in rank order). Returns the
    joined store's result on rank 0 (rows written and reused summed over the ranks), the shard's
    elsewhere."""
    cuda = torch.cuda.is_available() and options.get("device", "auto").partition(":")[0] in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(rank.local)
        options["device"] = f"cuda:{rank.local}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=WAIT)
    try:
        if rank.rank == 0:
            _warn_other_world_sizes(output, rank.world)
        mine = extract(part, backbone, shard_path(output, rank.rank, rank.world), **options)
        counts: list[Any] = [None] * rank.world
        dist.all_gather_object(counts, (mine.written, mine.reused, len(part)))  # every shard is finished past here
        result = mine
        if rank.rank == 0:
            ends = np.cumsum([c[2] for c in counts]).tolist()
            blocks = list(zip([0, *ends[:-1]], ends))
            result = join_shards(whole(), backbone, output, blocks, merge=merge, **options)
            result.written, result.reused = sum(c[0] for c in counts), sum(c[1] for c in counts)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _warn_other_world_sizes(output: Path, world: int) -> None:
    folder = shard_path(output, 0, world).parent
    read = set()  # shards a finished output still reads: never to be deleted
    if output.is_file():
        with FeatureStore(output) as store:
            read = set(store.shard_files())
    other = sorted(p.name for p in folder.glob(f"{output.stem}-*-of-*.h5")
                   if not p.name.endswith(f"-of-{world}.h5") and p.name not in read)
    if other:
        log.warning("%s holds shards of another number of processes (%s): their row ranges differ from those "
                    "of %d processes, so they are not reused; delete them once this run has finished",
                    folder, ", ".join(other[:4]), world)


def join_shards(dataset: ImageDataset, backbone: Backbone, output: Path, blocks: list[tuple[int, int]], *,
                merge: bool = False, dtype: str = "float16", grid: bool = False, mid_grid: bool = False,
                overwrite: bool = False, max_failures: float = 0.01, **_: Any) -> ExtractResult:
    """Join the finished shards (``blocks``: their row ranges) into the store ``output`` of ``dataset``:
    virtual data sets over the shards, or with ``merge`` a copy of their rows. The store is the one
    a single-process run writes (same provenance, splits, failures; with ``merge`` the same bytes of
    features), written as ``OUTPUT.partial`` and renamed."""
    wanted = store_provenance(dataset, backbone, dtype, grid, mid_grid)
    shards = [shard_path(output, r, len(blocks)) for r in range(len(blocks))]
    with output_lock(output):
        done = finished(output, wanted, overwrite)
        if done is not None:
            return done
        failures: dict[int, str] = {}
        for (start, _), shard in zip(blocks, shards):
            with FeatureStore(shard) as store:
                if not store.complete:
                    raise PipelineError(f"{shard}: shard unfinished; rerun the same command to resume it")
                failures.update({start + i: reason for i, reason in store.failures.items()})
        limit = failure_limit(max_failures, len(dataset))
        if len(failures) > limit:
            raise PipelineError(f"{len(failures)} of {len(dataset)} images could not be read, more than max_failures "
                                f"allows ({limit}); the shards are kept in {shards[0].parent}: fix or remove those "
                                "images, or raise max_failures, and rerun")
        partial = output.with_name(output.name + ".partial")
        links = [] if merge else [Shard(start, stop, os.path.relpath(shard, output.parent))
                                  for (start, stop), shard in zip(blocks, shards) if stop > start]
        create_store(partial, dataset, backbone.feature_dim, dtype, backbone.grid_shape if grid else None, wanted,
                     mid_grid_shape=backbone.mid_grid_shape if mid_grid else None, head=backbone.head, shards=links)
        with FeatureWriter(partial) as writer:
            for (start, _), shard in zip(blocks, shards):
                _join_rows(writer, shard, start, merge)
            writer.finalize(failures)
        partial.replace(output)
    return ExtractResult(output, failures=failures)


def _join_rows(writer: FeatureWriter, shard: Path, start: int, merge: bool) -> None:
    """Mark the finished rows of ``shard`` (rows ``start``... of the joined store) written, copying them
    first with ``merge``, one grid chunk (or features chunk) of rows at a time."""
    with FeatureStore(shard) as store:
        done = np.flatnonzero(store.ok)
        if not merge:
            writer.mark_written(start + done)
            return
        names = ["features", *(["grid"] if store.has_grid else []), *(["grid_mid"] if store.has_mid_grid else [])]
        step = store.chunk_rows(names[-1])
        for lo in range(0, len(done), step):
            rows = done[lo:lo + step]
            span = slice(int(rows[0]), int(rows[-1]) + 1)  # raw rows in the stored dtype: the same bytes
            writer.write(start + rows, *(store.dataset(n)[span][rows - rows[0]] for n in names))
