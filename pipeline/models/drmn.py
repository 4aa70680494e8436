"""DRMN, the Dual Relation Mining Network (Ge et al., 2023), on cached grid features.

The image side has two branches, both ending in the attribute space [A]:

* **Attribute branch** (region features ``grid`` [B, R, D]):

  1. *Multi-level feature fusion* (:class:`LevelFusion`): when the store holds ``grid_mid`` (an
     earlier backbone stage on the same R regions, ``extract --mid-grid``), it is projected to the
     last stage's D channels by a linear map and mixed with ``grid`` by learnt softmax weights.
     ``multi_level=False`` (or a store without ``grid_mid``) uses ``grid`` alone.
  2. *Attribute-guided channel attention*: every attribute ``a`` gets channel weights
     ``c_a = sigmoid(MLP(e_a))`` in (0, 1)^D from its name embedding ``e_a``. They gate the D channels
     before the spatial attention (the attention reads ``grid ⊙ c_a``) and after it (the attended
     feature is ``c_a ⊙ Σ_r α_ar g_r``), decoupling the entangled channels of each attribute.
  3. *Spatial attention* (visual → semantic embedding): query ``q_a = W_q e_a``, keys
     ``W_k (g_r ⊙ c_a)``, ``α_a = softmax_r(q_a · k_r / √hidden)`` over the R regions. Because the keys
     are linear in ``g_r`` this is computed as ``g_r · u_a`` with ``u_a = (W_kᵀ q_a) ⊙ c_a`` [A, D], so
     the [B, A, R, D] tensor of gated grids is never formed.
  4. *Semantic interaction transformer*: the A attended features, projected to ``hidden`` and added
     to a projection of the attribute embeddings (token identity), go through ``layers`` standard
     ``nn.TransformerEncoderLayer`` s (``heads`` heads, pre-norm) that model relations among the
     attributes; a linear head gives one score per attribute [B, A].

* **Global branch**: the pooled feature (standardised with the training mean/std) through
  ``mlp(D', hidden, A)`` gives attribute scores [B, A].

Class embeddings are the L2-normalised class attribute vectors ``semantics.vectors`` [C, A]. Each
branch's class scores are ``scale · cos(branch output, class vector)``. Training minimises, over the
seen classes, the cross-entropy of both branches' scores (summed), plus ``attr_weight`` × the mean
squared error between each branch's L2-normalised output and the label's L2-normalised attribute
vector (an attribute regression term; 0 = off, the default).

Image embedding = ``(1 − global_weight) · n(attr) + global_weight · n(global)`` with ``n`` the L2
normalisation, so the inner product with a class embedding is the weighted sum of the two branches'
cosines: ``global_weight`` 0 is the attribute branch alone, 1 the global branch alone. It does not
affect training, and the validation grid picks it.

Ablations: ``multi_level=False`` (the last stage's grid only), ``channel_attention=False`` (no channel
gating, plain spatial attention), ``layers=0`` (no transformer: the attended features are scored
directly), ``global_weight`` 0 or 1.

Training streams ``train.grid`` in shuffled mini-batches (:func:`pipeline.models.streaming.training_batches`),
never loading the whole grid; on CUDA it runs under fp16 autocast with a gradient scaler, on a CPU with
native bf16 arithmetic (AVX512-BF16) under bf16 autocast (a CUB step of 64 images at 224 px: 0.38 s on 2 cores).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split
from pipeline.models.layers import CPUFastDropout, Standardize, mlp
from pipeline.models.streaming import GridBatch, embed, train_on_grid
from pipeline.models.torch_model import TorchZSLModel
from pipeline.norms import l2_normalize


class LevelFusion(nn.Module):
    """Multi-level feature fusion of backbone stages joined along channels, [B, R, D_1 + ... + D_L].

    Every stage but the last is projected to the last one's D_L channels by a linear map; the L
    grids are summed with learnt softmax weights (equal at the start). One level passes through.
    """

    def __init__(self, level_dims: tuple[int, ...]):
        super().__init__()
        self.level_dims = tuple(int(d) for d in level_dims)
        self.project = nn.ModuleList(nn.Linear(d, self.level_dims[-1]) for d in self.level_dims[:-1])
        self.logits = nn.Parameter(torch.zeros(len(self.level_dims)))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        if len(self.level_dims) == 1:
            return grid
        *earlier, last = torch.split(grid, self.level_dims, dim=-1)
        levels = [project(level) for project, level in zip(self.project, earlier)] + [last]
        weights = torch.softmax(self.logits, dim=0)
        return sum(w * level for w, level in zip(weights, levels))  # type: ignore[return-value]


class DRMNNet(nn.Module):
    """The DRMN module for grid channels ``grid_dim``, pooled channels ``pooled_dim``, ``n_attributes``
    attributes with ``embed_dim``-d name embeddings (kept in the buffer ``attribute_vectors``);
    ``mid_dims``: channels of earlier stages fused with the grid (joined before it along channels)."""

    def __init__(self, grid_dim: int, pooled_dim: int, n_attributes: int, embed_dim: int, h: dict[str, Any],
                 mid_dims: tuple[int, ...] = ()):
        super().__init__()
        hidden = int(h["hidden"])
        self.channel_attention = bool(h["channel_attention"])
        self.register_buffer("attribute_vectors", torch.zeros(n_attributes, embed_dim))
        self.fusion = LevelFusion((*mid_dims, grid_dim))
        self.norm = nn.LayerNorm(grid_dim)
        # attribute-guided channel attention: e_a -> (0, 1)^D
        self.channel = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, grid_dim))
        # spatial attention: query from e_a, keys from the (gated) region features
        self.query = nn.Linear(embed_dim, hidden)
        self.key = nn.Linear(grid_dim, hidden, bias=False)
        # semantic interaction transformer over the A attribute tokens
        self.value = nn.Linear(grid_dim, hidden)
        self.token = nn.Linear(embed_dim, hidden)
        self.dropout = CPUFastDropout(float(h["dropout"]))
        self.transformer = nn.ModuleList([
            nn.TransformerEncoderLayer(hidden, int(h["heads"]), 2 * hidden, float(h["dropout"]), batch_first=True,
                                       norm_first=True)
            for _ in range(int(h["layers"]))])
        for layer in self.transformer:  # the same masks' law, drawn ~8x faster on the CPU than bernoulli_
            layer.dropout, layer.dropout1, layer.dropout2 = (CPUFastDropout(float(h["dropout"])) for _ in range(3))
            # no dropout on the [B·heads, A, A] attention probabilities: on CUB (A = 312) their CPU
            # bernoulli_ masks were 0.19 s of a 1.1 s step; the token and feed-forward dropouts above stay
            layer.self_attn.dropout = 0.0
        self.out_norm = nn.LayerNorm(hidden)
        self.score = nn.Linear(hidden, 1)
        # global branch
        self.standardize = Standardize(pooled_dim)
        self.global_head = mlp(pooled_dim, hidden, n_attributes, float(h["dropout"]))
        self.hidden = hidden

    def channel_weights(self) -> torch.Tensor:
        """[A, D] channel weights in (0, 1) (all ones without channel attention)."""
        gates = torch.sigmoid(self.channel(self.attribute_vectors))
        return gates if self.channel_attention else torch.ones_like(gates)

    def attend(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual attention block on the (joined) grid levels: (attribute features [B, A, D], spatial
        attention [B, A, R])."""
        g = self.norm(self.fusion(grid))  # [B, R, D]
        gates = self.channel_weights()  # [A, D]
        q = self.query(self.attribute_vectors)  # [A, H]
        u = (q @ self.key.weight) * gates  # [A, D]: W_kᵀ q_a ⊙ c_a
        logits = torch.einsum("brd,ad->bar", g, u) / math.sqrt(self.hidden)
        attention = torch.softmax(logits.float(), dim=-1).to(g.dtype)
        features = torch.einsum("bar,brd->bad", attention, g) * gates
        return features, attention

    def interact(self, features: torch.Tensor) -> torch.Tensor:
        """Semantic interaction transformer: attribute features [B, A, D] -> attribute scores [B, A]."""
        tokens = self.dropout(self.value(features) + self.token(self.attribute_vectors))
        for layer in self.transformer:
            tokens = layer(tokens)
        return self.score(self.out_norm(tokens)).squeeze(-1)

    def attribute_branch(self, grid: torch.Tensor) -> torch.Tensor:
        return self.interact(self.attend(grid)[0])

    def global_branch(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.global_head(self.standardize(pooled))

    def embedding(self, grid: torch.Tensor, pooled: torch.Tensor, global_weight: float) -> torch.Tensor:
        """[B, A] image embedding: weighted sum of the two L2-normalised branch outputs."""
        a = F.normalize(self.attribute_branch(grid).float(), dim=-1)
        g = F.normalize(self.global_branch(pooled).float(), dim=-1)
        return (1.0 - global_weight) * a + global_weight * g


class DRMN(TorchZSLModel[DRMNNet]):
    """Dual Relation Mining Network on cached grid features; see the module docstring.

    Hyperparameters: ``epochs``, ``lr``, ``batch_size``, ``weight_decay`` (AdamW); ``heads``, ``layers``
    (transformer), ``hidden`` (token width and global-MLP hidden size), ``dropout``; ``scale`` (cosine
    logit scale); ``global_weight`` (inference mix, 0 = attribute branch only, 1 = global only);
    ``attr_weight`` (attribute regression term); ``multi_level`` and ``channel_attention`` (ablation
    switches); ``device``.
    """

    name = "drmn"
    defaults = {
        "epochs": 8, "lr": 5e-4, "batch_size": 64, "weight_decay": 1e-4,
        "heads": 4, "layers": 1, "hidden": 128, "dropout": 0.1, "scale": 20.0,
        "global_weight": 0.3, "attr_weight": 0.0, "multi_level": True, "channel_attention": True,
    }
    search_space = {"global_weight": [0.0, 0.3, 0.6]}
    inference_hparams = ("global_weight",)  # the branches' mix at embedding time: one fit serves all three

    def _class_vectors(self, semantics: Semantics) -> np.ndarray:
        return l2_normalize(semantics.vectors)

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        if semantics.attribute_vectors is None:
            raise PipelineError("drmn needs word vectors of the attribute names: set semantics.attribute_vectors "
                                "(a semantics file with attribute-name embeddings)")
        if train.grid is None:
            raise PipelineError("drmn attends over image regions: extract with --grid (params: extract.grid: true)")
        n_attributes = semantics.vectors.shape[1]
        if semantics.attribute_vectors.shape[0] != n_attributes:
            raise PipelineError(f"drmn: {semantics.attribute_vectors.shape[0]} attribute-name vectors but the class "
                                f"vectors have {n_attributes} attributes; use attribute semantics with matching names")
        if self.hparams["hidden"] % self.hparams["heads"]:
            raise PipelineError(f"drmn: hidden ({self.hparams['hidden']}) must be a multiple of heads "
                                f"({self.hparams['heads']})")
        mid = list(train.grid.with_mid().level_dims[:1]) if self.hparams["multi_level"] and train.grid.has_mid else []
        return [train.grid.shape[1], train.features.shape[1], n_attributes, semantics.attribute_vectors.shape[1], *mid]

    def build(self, sizes: list[int]) -> DRMNNet:
        return DRMNNet(sizes[0], sizes[1], sizes[2], sizes[3], self.hparams, tuple(sizes[4:]))

    def _levels(self, data: Split) -> Split:
        """``data`` with the grid levels the model was built for (``grid_mid`` joined before ``grid``)."""
        assert data.grid is not None
        if len(self.sizes) == 4:
            return data
        if not data.grid.has_mid:
            raise PipelineError(f"drmn: the model fuses grid_mid, which {data.grid.path} lacks; extract with "
                                "--grid --mid-grid, or train with multi_level=false")
        return dataclasses.replace(data, grid=data.grid.with_mid())

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        net = self.trained()
        h = self.hparams
        assert semantics.attribute_vectors is not None
        net.attribute_vectors.copy_(self.tensor(l2_normalize(semantics.attribute_vectors)))
        net.standardize.set_from(self.tensor(train.features))
        classes = self.tensor(self._class_vectors(semantics)[seen])  # [S, A], unit rows
        class_index = np.full(len(semantics.vectors), -1, dtype=np.int64)
        class_index[seen] = np.arange(len(seen))

        def branch_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            unit = F.normalize(out.float(), dim=-1)
            loss = F.cross_entropy(h["scale"] * unit @ classes.T, y)
            if h["attr_weight"] > 0:
                loss = loss + h["attr_weight"] * (unit - classes[y]).pow(2).sum(dim=1).mean()
            return loss

        def batch_loss(b: GridBatch) -> torch.Tensor:
            return branch_loss(net.attribute_branch(b.grid), b.labels) + branch_loss(net.global_branch(b.pooled),
                                                                                     b.labels)

        optimizer = torch.optim.AdamW(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        return train_on_grid(net, self._levels(train), batch_loss, optimizer, epochs=h["epochs"],
                             batch_size=h["batch_size"], generator=generator, device=self.device, model=self.name,
                             class_index=class_index, cpu_bf16=True)

    def image_embeddings(self, data: Split) -> np.ndarray:
        net = self.trained()
        if data.grid is not None and data.grid.shape[1] != self.sizes[0]:
            raise PipelineError(f"drmn: grid features are {data.grid.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[0]}-d ones (another backbone?)")
        data = self._levels(data) if data.grid is not None else data
        if data.features.shape[1] != self.sizes[1]:
            raise PipelineError(f"drmn: features are {data.features.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[1]}-d ones (another backbone?)")
        weight = float(self.hparams["global_weight"])
        return embed(data, lambda grid, pooled: net.embedding(grid, pooled, weight), self.hparams["batch_size"],
                     self.device, self.name)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        self.trained()
        if semantics.vectors.shape[1] != self.sizes[2]:
            raise PipelineError(f"drmn: class vectors have {semantics.vectors.shape[1]} attributes but the model was "
                                f"fitted on {self.sizes[2]}")
        return self._class_vectors(semantics)
