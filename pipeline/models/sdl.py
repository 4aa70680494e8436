"""SDL, Semantic Diversity Learning (Ben-Cohen et al., ICCV 2021): multi-label zero-shot tagging.

Each image gets an embedding *matrix* ``A`` [K, E] of K principal vectors in the space of the tag
word vectors ``w_c`` (``semantics.vectors``, rows L2-normalised); its score for tag c is
``max_k ⟨A_k, w_c⟩``, so one image can rank several semantically distant tags high.

Head, on cached features (``input``):

* ``pooled`` (the default, the published head: global average pooling, then one bias-free Linear
  to K·E, ``factory.to_sdl``): standardised pooled features -> Linear -> K·E (``hidden`` > 0 puts
  Linear, ReLU, dropout before it);
* ``grid`` (our extension, opt-in; ``auto`` picks it when the store has grid features): K learned
  queries attend over the layer-normalised regions (scaled dot product, softmax over regions); each
  attended feature goes through a shared Linear -> E, so every principal vector can look at a
  different object.

Loss of image i with positive seen tags P_i and negative seen tags N_i (every other seen tag;
images without a positive seen tag are skipped; unseen tags are never used):

* ranking: ``r_i = (1 + d_i) / |P_i| · Σ_{p∈P_i} Σ_{n∈N_i} log(1 + exp(s_n − s_p))``,
* semantic-diversity weight ``d_i``: the summed per-dimension variance of the word vectors of
  P_i (0 for one positive). Images showing semantically diverse tags weigh more;
  ``diversity_weighting: false`` is the ablation (``d_i = 0``),
* principal-vector regulariser ``v_i = Σ_e Var_k A[k, e]`` (variance over the K vectors, as in
  the official implementation: it bounds how far they spread, keeping them in the region the
  word vectors occupy); ``loss_i = 2 ((1 − λ) r_i + λ v_i)`` with ``λ = reg_weight`` (K > 1 only).
  The official repository is ambiguous here: ``SDLLoss`` defaults to λ = 0.3 but ``train.py``
  passes ``--var_weight`` 0.01; both are in the validation grid.

At test the image embedding is ``A`` [N, K, E] and :mod:`pipeline.scoring` scores a tag by the
maximum over the K inner products. Not from the paper: the backbone is frozen (cached features).

Training ``recipe``: ``frozen`` (ours, the default: AdamW lr 1e-3, weight decay 1e-4, batch 128,
20 epochs, for a head trained from scratch on frozen features) or ``official`` (the official
``train.py``, the repository's only training script, written for MS-COCO: Adam lr 2.5e-5 with L2 3e-4 on the weights only, not biases or norms, OneCycle with
10 % warm-up, batch 32, 10 epochs; meant for fine-tuning the whole network). Explicit ``lr``,
``batch_size``, ``epochs`` or ``weight_decay`` override the recipe.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split
from pipeline.models.layers import Standardize
from pipeline.models.streaming import GridBatch, embed, train_on_grid
from pipeline.models.torch_model import TorchZSLModel, train_epochs
from pipeline.norms import l2_normalize

INPUTS = ("auto", "pooled", "grid")
RECIPES: dict[str, dict[str, Any]] = {
    "frozen": {"lr": 1e-3, "batch_size": 128, "epochs": 20, "weight_decay": 1e-4},
    "official": {"lr": 2.5e-5, "batch_size": 32, "epochs": 10, "weight_decay": 3e-4},
}
CHUNK_GRID = 256  # images per forward pass when embedding grid features


def diversity(targets: np.ndarray, vectors: np.ndarray, block: int = 16384) -> np.ndarray:
    """[N] summed per-dimension (unbiased) variance of the rows of ``vectors`` [S, E] that each
    image's positive tags ``targets`` [N, S] select; 0 for images with fewer than two positives."""
    out = np.zeros(len(targets), np.float32)
    vectors = vectors.astype(np.float32)
    for start in range(0, len(targets), block):
        t = targets[start:start + block].astype(np.float32)
        n = t.sum(axis=1)
        total, squares = t @ vectors, t @ (vectors ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (squares - total ** 2 / n[:, None]).sum(axis=1) / (n - 1)
        out[start:start + block] = np.where(n > 1, np.maximum(var, 0), 0)
    return out


def sdl_loss(principal: torch.Tensor, tags: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
             reg_weight: float) -> torch.Tensor:
    """Mean SDL loss over the images with a positive tag (see the module docstring).

    ``principal`` [B, K, E], ``tags`` [S, E] word vectors, ``targets`` [B, S] bool, ``weights``
    [B] the diversity terms ``d_i`` (None: no diversity weighting).
    """
    scores = torch.einsum("bke,se->bks", principal, tags).amax(dim=1)  # [B, S]
    n_pos = targets.sum(dim=1)
    has = n_pos > 0
    if not has.any():
        return principal.sum() * 0.0
    pos = torch.topk(targets.float(), int(n_pos.max()), dim=1).indices  # positives first, padded
    valid = targets.gather(1, pos)
    pairs = valid[:, :, None] & ~targets[:, None, :]  # [B, P, S]: (positive, negative) pairs
    margins = scores[:, None, :] - scores.gather(1, pos)[:, :, None]
    rank = (F.softplus(margins) * pairs).sum(dim=(1, 2)) / n_pos.clamp(min=1)
    if weights is not None:
        rank = rank * (1 + weights)
    loss = rank
    if principal.shape[1] > 1 and reg_weight > 0:
        spread = principal.float().var(dim=1).sum(dim=-1)
        loss = 2 * ((1 - reg_weight) * rank + reg_weight * spread)
    return loss[has].mean()


class _SDLNet(nn.Module):
    def __init__(self, in_dim: int, grid_dim: int, embed_dim: int, h: dict[str, Any]):
        super().__init__()
        self.k, self.embed_dim = int(h["k"]), embed_dim
        if grid_dim:
            self.norm = nn.LayerNorm(grid_dim)
            self.queries = nn.Parameter(torch.randn(self.k, grid_dim) / math.sqrt(grid_dim))
            self.out = nn.Linear(grid_dim, embed_dim)
        else:
            self.standardize = Standardize(in_dim)
            layers: list[nn.Module] = []
            if h["hidden"] > 0:
                layers += [nn.Linear(in_dim, h["hidden"]), nn.ReLU(), nn.Dropout(h["dropout"])]
            layers.append(nn.Linear(h["hidden"] if h["hidden"] > 0 else in_dim, self.k * embed_dim, bias=False))
            self.head = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K, E] principal vectors from pooled features [B, D] or regions [B, R, D']."""
        if grid is not None:
            regions = self.norm(grid.float())
            attention = torch.softmax(regions @ self.queries.T / math.sqrt(regions.shape[-1]), dim=1)  # [B, R, K]
            return self.out(attention.transpose(1, 2) @ regions)
        return self.head(self.standardize(pooled)).view(len(pooled), self.k, self.embed_dim)


class SDL(TorchZSLModel[_SDLNet]):
    """K principal vectors per image, the SDL ranking loss with semantic-diversity weighting."""

    name = "sdl"
    multilabel = True
    defaults = {
        "k": 7, "input": "pooled", "hidden": 0, "dropout": 0.2, "reg_weight": 0.3, "diversity_weighting": True,
        "recipe": "frozen", "epochs": None, "lr": None, "batch_size": None, "weight_decay": None,
    }
    search_space = {"k": [3, 7], "reg_weight": [0.01, 0.3]}

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hparams["recipe"] not in RECIPES:
            raise PipelineError(f"sdl: recipe {self.hparams['recipe']!r} unknown; use one of {sorted(RECIPES)}")
        self.hparams.update({k: v for k, v in RECIPES[self.hparams["recipe"]].items() if self.hparams[k] is None})

    def _optimizer(self, net: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """The recipe's optimizer and per-batch scheduler (None: constant learning rate)."""
        h = self.hparams
        if h["recipe"] == "frozen":
            return torch.optim.AdamW(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"]), None
        decayed: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        for name, p in net.named_parameters():  # official add_weight_decay: no L2 on biases and norms
            (decayed if p.ndim > 1 and not name.endswith(".bias") else rest).append(p)
        optimizer = torch.optim.Adam([{"params": decayed, "weight_decay": h["weight_decay"]},
                                      {"params": rest, "weight_decay": 0.0}], lr=h["lr"])
        # OneCycleLR needs two warm-up steps or more: very short runs end before the schedule does
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=h["lr"], total_steps=max(steps, 20),
                                                       pct_start=0.1)
        return optimizer, schedule

    def _uses_grid(self, data: Split) -> bool:
        choice = self.hparams["input"]
        if choice not in INPUTS:
            raise PipelineError(f"sdl: input {choice!r} unknown; use one of {INPUTS}")
        if choice == "grid" and data.grid is None:
            raise PipelineError("sdl: input grid needs grid features: extract with --grid (params: extract.grid: true)")
        return choice == "grid" or (choice == "auto" and data.grid is not None)

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        grid_dim = int(train.grid.shape[1]) if self._uses_grid(train) else 0  # type: ignore[union-attr]
        return [train.features.shape[1], grid_dim, semantics.vectors.shape[1]]

    def build(self, sizes: list[int]) -> _SDLNet:
        return _SDLNet(sizes[0], sizes[1], sizes[2], self.hparams)

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        net = self.trained()
        h = self.hparams
        vectors = l2_normalize(semantics.vectors)[seen]
        tags = self.tensor(vectors)
        targets = torch.as_tensor(positions, device=self.device)
        weights = self.tensor(diversity(positions, vectors)) if h["diversity_weighting"] else None

        def loss(principal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(self.device)
            return sdl_loss(principal, tags, targets[rows], weights[rows] if weights is not None else None,
                            h["reg_weight"])

        batch_size = int(h["batch_size"])
        steps = int(h["epochs"]) * -(-len(train) // batch_size)
        if self.sizes[1]:
            def batch_loss(batch: GridBatch) -> torch.Tensor:
                return loss(net(batch.pooled, batch.grid), batch.rows)

            optimizer, schedule = self._optimizer(net, steps)
            return train_on_grid(net, train, batch_loss, optimizer, epochs=h["epochs"], batch_size=h["batch_size"],
                                 generator=generator, device=self.device, model=self.name,
                                 class_index=np.arange(len(semantics.vectors)), scheduler=schedule)
        features = self.tensor(train.features)
        net.standardize.set_from(features)
        optimizer, schedule = self._optimizer(net, steps)
        return train_epochs(optimizer, len(features), lambda rows: loss(net(features[rows.to(self.device)]), rows),
                            epochs=h["epochs"], batch_size=h["batch_size"], generator=generator, name=self.name,
                            scheduler=schedule)

    def image_embeddings(self, data: Split) -> np.ndarray:
        net = self.trained()
        if data.features.shape[1] != self.sizes[0]:
            raise PipelineError(f"sdl: features are {data.features.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[0]}-d")
        if self.sizes[1]:
            if data.grid is None or int(data.grid.shape[1]) != self.sizes[1]:
                raise PipelineError(f"sdl: the model attends over {self.sizes[1]}-d grid features; these images have "
                                    f"{'none' if data.grid is None else data.grid.shape[1]}")
            return embed(data, lambda grid, pooled: net(pooled, grid), CHUNK_GRID, self.device, self.name)
        return self.embed_rows(net, data.features)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        if semantics.vectors.shape[1] != self.sizes[2]:
            raise PipelineError(f"sdl: tag vectors are {semantics.vectors.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[2]}-d")
        return l2_normalize(semantics.vectors)

