"""Mini-batches of grid features for attention models, streamed from the store to the device.

Models keep their own losses and optimiser steps (devices come from
:func:`pipeline.device.resolve_device`); these helpers only move data: training batches
drawn from the whole training set (each a read of just its rows, overlapped with compute, see
:mod:`pipeline.grid`) and in-order embedding of a whole split.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.models.base import Split, epoch_bar


@dataclass
class GridBatch:
    """One mini-batch on the device: grid [B, R, D], pooled features [B, D'], labels [B], and
    ``rows`` [B] (CPU), the images' positions in the training split (to look up their tags)."""

    grid: torch.Tensor
    pooled: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor


def autocast(device: torch.device, cpu_bf16: bool = False) -> ContextManager:
    """fp16 mixed precision on CUDA; with ``cpu_bf16``, bf16 on a CPU with native bf16 arithmetic
    (AVX512-BF16), else nothing."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if cpu_bf16 and device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _require_grid(data: Split, model: str) -> None:
    if data.grid is None:
        raise PipelineError(f"{model} attends over image regions: extract with --grid (params: extract.grid: true)")


SAMPLINGS = ("uniform", "balanced")


def epoch_draws(labels: np.ndarray, batch_size: int, rng: np.random.Generator, sampling: str) -> list[np.ndarray]:
    """Positions of one epoch's ``ceil(n / batch_size)`` mini-batches, drawn from the whole training set
    as MSDN's loaders draw them. ``uniform``: a fresh permutation of every image, cut into batches;
    ``balanced`` (its AWA2 and SUN loaders, ``is_balance``): each batch takes ``min(C, batch_size)``
    distinct classes of the C present, at random, and ``max(batch_size // C, 1)`` images of each, drawn
    with replacement (AWA2: 40 classes, batches of 40 images)."""
    n = len(labels)
    count = -(-n // batch_size)
    if sampling == "uniform":
        order = rng.permutation(n)
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]
    if sampling != "balanced":
        raise PipelineError(f"sampling {sampling!r} unknown; use one of {', '.join(SAMPLINGS)}")
    if (labels < 0).any():
        raise PipelineError("balanced sampling needs one class per image; multi-label data take sampling: uniform")
    by_class = np.split(np.argsort(labels, kind="stable"), np.flatnonzero(np.diff(np.sort(labels))) + 1)
    per_class = max(batch_size // len(by_class), 1)
    return [np.concatenate([rng.choice(by_class[c], per_class)
                            for c in rng.choice(len(by_class), min(len(by_class), batch_size), replace=False)])
            for _ in range(count)]


def training_batches(train: Split, batch_size: int, seed: int, device: torch.device, model: str,
                     class_index: np.ndarray | None = None, sampling: str = "uniform") -> Iterator[GridBatch]:
    """One epoch of mini-batches of ``train`` drawn by :func:`epoch_draws` from ``seed``; ``class_index``
    maps global labels to model rows (multi-label data, labels -1, keeps them)."""
    _require_grid(train, model)
    assert train.grid is not None
    labels = class_index[train.labels] if class_index is not None and train.tags is None else train.labels
    draws = epoch_draws(train.labels, batch_size, np.random.default_rng(seed), sampling)
    for positions, grid in train.grid.draws(draws):
        yield GridBatch(torch.from_numpy(grid).to(device, non_blocking=True),
                        torch.from_numpy(train.features[positions].astype(np.float32)).to(device),
                        torch.from_numpy(labels[positions]).to(device), torch.from_numpy(positions))


@torch.no_grad()
def embed(data: Split, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int,
          device: torch.device, model: str) -> np.ndarray:
    """``fn(grid, pooled) -> [B, ...]`` over every image of ``data``, in ``data``'s order, float32."""
    _require_grid(data, model)
    assert data.grid is not None
    out: np.ndarray | None = None
    for positions, grid in data.grid.batches(batch_size):
        pooled = torch.from_numpy(data.features[positions].astype(np.float32)).to(device)
        with autocast(device):
            emb = fn(torch.from_numpy(grid).to(device), pooled).float().cpu().numpy()
        if out is None:
            out = np.empty((len(data), *emb.shape[1:]), np.float32)
        out[positions] = emb
    if out is None:
        raise PipelineError(f"{model}: no images to embed")
    return out


def train_on_grid(net: torch.nn.Module, train: Split, batch_loss: Callable[[GridBatch], torch.Tensor],
                  optimizer: torch.optim.Optimizer, *, epochs: int, batch_size: int, generator: torch.Generator,
                  device: torch.device, model: str, class_index: np.ndarray,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                  sampling: str = "uniform", cpu_bf16: bool = False) -> list[float]:
    """``optimizer`` steps over ``epochs`` streamed epochs of ``train``, batches drawn by
    :func:`epoch_draws` (fp16 autocast + grad scaling on CUDA, bf16 autocast on the CPU with ``cpu_bf16``:
    :func:`autocast`; ``scheduler``, if any, steps after every batch); ``batch_loss`` returns a batch's
    mean loss. Returns the mean loss of each epoch."""
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    losses = []
    bar = epoch_bar(epochs, model)
    for _ in bar:
        epoch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        total, count = 0.0, 0
        for batch in training_batches(train, int(batch_size), epoch_seed, device, model, class_index,
                                       sampling):
            with autocast(device, cpu_bf16):
                loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(batch.labels)
            count += len(batch.labels)
        losses.append(total / max(count, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
