"""MSDN, the Mutually Semantic Distillation Network (Chen et al., CVPR 2022), on cached grid features.

Two attention sub-networks share the attribute-name word vectors ``V`` [A, E]
(``semantics.attribute_vectors``, rows L2-normalised and kept in the model as a buffer) and read an
image's regions ``f`` [R, D] (``Split.grid``, streamed from the store, never loaded whole):

* **AVA**, attribute → visual: every attribute attends over the regions,
  ``α = softmax_R((V W₁) fᵀ)`` [A, R]; attribute-based visual features ``F = α f`` [A, D]; attribute
  scores ``ψ_a = ⟨(V W₂)_a, F_a⟩`` [A].
* **VAA**, visual → attribute: every region attends over the attributes,
  ``γ = softmax_A(f (V W₃)ᵀ)`` [R, A]; region-wise attribute evidence ``s = f (V W₄)ᵀ`` [R, A];
  visual-based attribute features ``γ ⊙ s`` max-pooled over the regions give ``φ`` [A].

``W_i`` are linear maps E → D (``hidden`` > 0: an MLP E → hidden → D with LeakyReLU). Class logits
of a sub-network are ``⟨score, ŝ_c⟩ / temperature`` with ``ŝ_c`` the L2-normalised attribute vector of
class c (``semantics.vectors`` [C, A]). Loss per mini-batch, for each sub-network:

* attribute-based cross-entropy over the SEEN classes, plus
* ``calibration_weight`` × self-calibration over ALL classes: ``−log Σ_{u ∈ unseen} p(u | x)`` with
  ``p`` the softmax over every class. It moves some probability mass to the unseen classes so
  that GZSL scores are not all drawn to the seen ones; it uses the unseen classes' attribute
  vectors only, never an unseen image (zero when there are no unseen classes),

plus ``distill_weight`` × the semantic distillation loss, the Jensen–Shannon divergence between
the two sub-networks' posteriors over the seen classes (symmetric, zero for identical ones):
``distill_weight: 0`` is the no-distillation ablation.

At test an image's embedding is ``combine · ψ + (1 − combine) · φ`` in attribute space and a class's
embedding its L2-normalised attribute vector, so the score (inner product) is the weighted sum of
the two sub-networks' logits (times the temperature). Not implemented from the paper: its
attribute-regression loss and the calibrated stacking at test (the evaluation applies its own).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split
from pipeline.models.layers import TorchZSLModel, l2_normalize
from pipeline.models.streaming import GridBatch, embed, train_on_grid

NO_ATTRIBUTE_VECTORS = ("MSDN needs attribute-name embeddings: set semantics.attribute_vectors "
                        "(e.g. minilm or the w2v .pkl)")


def _semantic_map(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim, bias=False)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim, bias=False))


def distillation_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Jensen–Shannon divergence between ``softmax(logits_a)`` and ``softmax(logits_b)``."""
    log_p, log_q = F.log_softmax(logits_a.float(), dim=-1), F.log_softmax(logits_b.float(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - np.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def calibration_loss(logits_all: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """Self-calibration: mean over rows of ``−log Σ_{u ∈ unseen} softmax(logits_all)_u``."""
    if unseen.numel() == 0:
        return logits_all.new_zeros(())
    log_p = F.log_softmax(logits_all.float(), dim=-1)
    return -torch.logsumexp(log_p[:, unseen], dim=-1).mean()


class _MSDNNet(nn.Module):
    """The two sub-networks; ``forward(grid [B, R, D])`` -> dict of ψ, φ [B, A], α [B, A, R], γ [B, R, A]."""

    def __init__(self, feature_dim: int, n_attributes: int, word_dim: int, hidden: int):
        super().__init__()
        self.register_buffer("attribute_vectors", torch.zeros(n_attributes, word_dim))
        self.w1, self.w2, self.w3, self.w4 = (_semantic_map(word_dim, hidden, feature_dim) for _ in range(4))

    def forward(self, grid: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.attribute_vectors
        # AVA: attributes attend over regions
        alpha = torch.softmax(torch.einsum("ad,brd->bar", self.w1(v), grid), dim=-1)  # [B, A, R]
        attended = torch.einsum("bar,brd->bad", alpha, grid)  # [B, A, D]
        psi = (attended * self.w2(v)).sum(-1)  # [B, A]
        # VAA: regions attend over attributes
        gamma = torch.softmax(torch.einsum("brd,ad->bra", grid, self.w3(v)), dim=-1)  # [B, R, A]
        evidence = torch.einsum("brd,ad->bra", grid, self.w4(v))  # [B, R, A]
        phi = (gamma * evidence).amax(dim=1)  # [B, A]
        return {"psi": psi, "phi": phi, "alpha": alpha, "gamma": gamma}


class MSDN(TorchZSLModel):
    """Mutually Semantic Distillation Network over grid features; see the module docstring.

    Needs ``Split.grid`` (extract with ``--grid``) and ``semantics.attribute_vectors`` [A, E] whose A
    rows match the A columns of ``semantics.vectors`` (the class attributes). Sizes: [D, A, E].
    """

    name = "msdn"
    defaults = {
        "epochs": 20, "lr": 1e-3, "batch_size": 64, "weight_decay": 1e-4, "hidden": 0,
        "temperature": 1.0, "combine": 0.5, "distill_weight": 1.0, "calibration_weight": 0.1,
        "device": "auto",
    }
    grid = {"calibration_weight": [0.1, 0.5], "distill_weight": [0.1, 1.0]}

    def _attribute_vectors(self, semantics: Semantics) -> np.ndarray:
        if semantics.attribute_vectors is None:
            raise PipelineError(NO_ATTRIBUTE_VECTORS)
        vectors = np.asarray(semantics.attribute_vectors, dtype=np.float32)
        n_attributes = np.asarray(semantics.vectors).shape[1]
        if vectors.ndim != 2 or len(vectors) != n_attributes:
            raise PipelineError(f"{self.name}: {len(vectors)} attribute-name vectors but the class semantics have "
                                f"{n_attributes} columns; MSDN needs class attributes (semantics: attributes) "
                                "with one name vector per attribute")
        return l2_normalize(vectors)

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        vectors = self._attribute_vectors(semantics)
        if train.grid is None:
            raise PipelineError(f"{self.name} attends over image regions: extract with --grid "
                                "(params: extract.grid: true)")
        return [int(train.grid.shape[1]), len(vectors), vectors.shape[1]]

    def build(self, sizes: list[int]) -> nn.Module:
        return _MSDNNet(sizes[0], sizes[1], sizes[2], int(self.hparams["hidden"]))

    def _classes(self, semantics: Semantics) -> np.ndarray:
        return l2_normalize(np.asarray(semantics.vectors, dtype=np.float32))

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        net: _MSDNNet = self.trained()  # type: ignore[assignment]
        h = self.hparams
        if h["temperature"] <= 0:
            raise PipelineError(f"{self.name}: temperature must be > 0, got {h['temperature']}")
        with torch.no_grad():
            net.attribute_vectors.copy_(self.tensor(self._attribute_vectors(semantics)))
        classes = self.tensor(self._classes(semantics))  # [C, A]
        n_classes = len(classes)
        seen_rows = torch.as_tensor(seen, device=self.device)
        unseen_rows = torch.as_tensor(np.setdiff1d(np.arange(n_classes), seen), device=self.device)
        class_index = np.full(n_classes, -1, dtype=np.int64)
        class_index[seen] = np.arange(len(seen))

        def batch_loss(batch: GridBatch) -> torch.Tensor:
            out = net(batch.grid)
            return self.loss(out["psi"].float(), out["phi"].float(), batch.labels, classes, seen_rows, unseen_rows)

        return train_on_grid(net, train, batch_loss, epochs=h["epochs"], batch_size=h["batch_size"], lr=h["lr"],
                             weight_decay=h["weight_decay"], generator=generator, device=self.device, model=self.name,
                             class_index=class_index)

    def loss(self, psi: torch.Tensor, phi: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
             seen_rows: torch.Tensor, unseen_rows: torch.Tensor) -> torch.Tensor:
        """CE over seen + self-calibration per sub-network, plus the distillation between them."""
        h = self.hparams
        total = psi.new_zeros(())
        seen_logits = []
        for scores in (psi, phi):
            logits = scores @ classes.T / h["temperature"]  # [B, C]
            seen_logits.append(logits[:, seen_rows])
            total = total + F.cross_entropy(seen_logits[-1], labels)
            if h["calibration_weight"] > 0:
                total = total + h["calibration_weight"] * calibration_loss(logits, unseen_rows)
        if h["distill_weight"] > 0:
            total = total + h["distill_weight"] * distillation_loss(*seen_logits)
        return total

    def _check_grid(self, data: Split) -> None:
        if data.grid is not None and int(data.grid.shape[1]) != self.sizes[0]:
            raise PipelineError(f"{self.name}: grid features are {data.grid.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[0]}-d ones (another backbone?)")

    @torch.no_grad()
    def attention(self, grid: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """The sub-networks on grid features [B, R, D]: ``alpha`` [B, A, R] (AVA, sums to 1 over regions),
        ``gamma`` [B, R, A] (VAA, sums to 1 over attributes), ``psi`` and ``phi`` [B, A]."""
        net: _MSDNNet = self.trained()  # type: ignore[assignment]
        out = net(torch.as_tensor(np.asarray(grid), dtype=torch.float32, device=self.device))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def image_embeddings(self, data: Split) -> np.ndarray:
        net: _MSDNNet = self.trained()  # type: ignore[assignment]
        self._check_grid(data)
        w = float(self.hparams["combine"])

        def fn(grid: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            out = net(grid)
            return w * out["psi"] + (1.0 - w) * out["phi"]

        return embed(data, fn, int(self.hparams["batch_size"]) * 4, self.device, self.name)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        self.trained()
        classes = self._classes(semantics)
        if classes.shape[1] != self.sizes[1]:
            raise PipelineError(f"{self.name}: the semantics have {classes.shape[1]} attributes but the model was "
                                f"fitted on {self.sizes[1]}")
        return classes
