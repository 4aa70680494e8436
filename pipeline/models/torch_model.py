"""The base of the models trained by gradient: one ``nn.Module`` built from a few input sizes, its
training loop over shuffled mini-batches, and the state round-trip of its tensors."""
from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split, ZSLModel, epoch_bar, seed_everything, seen_tags, seen_targets

log = logging.getLogger(__name__)
NetT = TypeVar("NetT", bound=nn.Module)
CHUNK = 8192  # rows per forward pass when embedding many images


def train_epochs(
    optimizer: torch.optim.Optimizer,
    n_rows: int,
    step: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    name: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    """``optimizer`` over shuffled mini-batches of ``n_rows`` rows; ``step(rows)`` returns a batch's
    mean loss; ``scheduler`` (if any) steps after every batch.

    The order comes from ``generator`` (CPU, seeded); rows are a CPU int64 tensor. Returns the mean
    loss of each epoch, also logged at DEBUG. Full-batch training: ``n_rows=1, batch_size=1``.
    """
    losses = []
    bar = epoch_bar(epochs, name)
    for epoch in bar:
        order = torch.randperm(n_rows, generator=generator)
        total = 0.0
        for start in range(0, n_rows, batch_size):
            rows = order[start:start + batch_size]
            loss = step(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(rows)
        losses.append(total / n_rows)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        log.debug("%s epoch %d/%d: loss %.4f", name, epoch + 1, epochs, losses[-1])
    return losses


class TorchZSLModel(ZSLModel, Generic[NetT]):
    """A model whose trained part is one ``nn.Module`` (``self.net``) built from a few input sizes.

    Subclasses implement :meth:`build` (sizes -> module, using ``self.hparams``) and :meth:`train_net`;
    :meth:`fit` seeds, builds, trains and times; :meth:`state` is the module's tensors plus the sizes.
    """

    def __init__(self, *, device: str = "auto", **hparams: Any):
        super().__init__(device=device, **hparams)
        self.device = resolve_device(device)
        self.net: NetT | None = None
        self.sizes: list[int] = []

    @abstractmethod
    def build(self, sizes: list[int]) -> NetT:
        """The untrained module for input sizes ``sizes`` (see each subclass)."""

    @abstractmethod
    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        """The sizes :meth:`build` needs, read from the inputs (checking them)."""

    @abstractmethod
    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        """Train ``self.net`` (already built, on ``self.device``); returns the per-epoch losses.
        ``positions``: each image's index in ``seen`` [N], or for multi-label models its tags over
        ``seen`` [N, S] bool (:func:`seen_tags`)."""

    def fit(self, train: Split, seen: np.ndarray, semantics: Semantics, seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        seen, positions = (seen_tags if self.multilabel else seen_targets)(self.name, train, seen, semantics)
        sizes = self.input_sizes(train, semantics)
        generator = seed_everything(seed)
        self.sizes = sizes
        self.net = self.build(sizes).to(self.device)
        self.net.train()
        losses = self.train_net(train, positions, seen, semantics, generator)
        self.net.eval()
        seconds = time.perf_counter() - start
        log.info("%s: fitted on %d images of %d seen classes in %.1f s", self.name, len(positions), len(seen), seconds)
        return {"loss": losses, "seconds": seconds}

    def trained(self) -> NetT:
        if self.net is None:
            raise PipelineError(f"{self.name}: the model is not trained; call fit or load_state first")
        return self.net

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def embed_rows(self, fn: Callable[..., torch.Tensor], *arrays: np.ndarray) -> np.ndarray:
        """``fn`` over row chunks of ``arrays`` (eval mode, no grad) as one float32 numpy array."""
        out = [fn(*(self.tensor(a[i:i + CHUNK]) for a in arrays)).float().cpu()
               for i in range(0, len(arrays[0]), CHUNK)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    def state(self) -> dict[str, Any]:
        net = self.trained()
        return {"sizes": torch.tensor(self.sizes, dtype=torch.int64),
                **{f"net.{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        sizes = [int(s) for s in torch.as_tensor(state["sizes"]).tolist()]
        net = self.build(sizes)
        net.load_state_dict({k[len("net."):]: torch.as_tensor(v) for k, v in state.items() if k.startswith("net.")})
        self.sizes, self.net = sizes, net.to(self.device).eval()
