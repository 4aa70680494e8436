"""Network pieces the trainable models share: input standardisation, MLPs, fast CPU dropout, DGP's graph
convolution and 2-layer GCN over a propagation plan, cosine logits."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError


class Standardize(nn.Module):
    """Per-dimension z-scoring with the training mean and std, kept as buffers (part of the state)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def set_from(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """``Linear -> LeakyReLU -> Dropout -> Linear``; ``hidden`` 0 gives a single linear layer (a perceptron)."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


class CPUFastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from NumPy's PCG64 raw bits: an element is kept where its 16-bit
    draw is ≥ ``round(p · 2¹⁶)`` (exact for p = 0.5), the generator seeded from torch's, so
    ``seed_everything`` still fixes every mask. torch's CPU ``bernoulli_`` was half of a GCN epoch on IN200
    (25 of 56 ms for a [471, 2048] hidden layer); these masks take ~3 ms. Other devices use ``nn.Dropout``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or h.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(h)
        seed = int(torch.randint(2**62, (1,)))
        n = h.numel()
        bits = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n].reshape(h.shape)
        mask = (bits >= round(self.p * 65536)).astype(np.float32)  # np.where(...) took 4x longer
        mask *= np.float32(1.0 / (1.0 - self.p))
        return h * torch.from_numpy(mask).to(h.dtype)


class GraphConv(nn.Module):
    """One graph convolution as DGP writes it: ``A · (dropout(H) W) + b``, ``W`` Xavier-uniform, ``b`` zero,
    ``A`` a normalised adjacency (the bias is added after propagation). When ``W`` widens its input it
    is computed as ``(A · dropout(H)) W``, the same product with the sparse multiplication on the
    narrower side (a third of a GCN epoch on IN200 went to propagating the 2048-wide ``H W``)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.dropout = CPUFastDropout(dropout)
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_dim, out_dim)))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = self.dropout(h)
        if h.shape[1] < self.weight.shape[1]:
            return torch.sparse.mm(adjacency, h) @ self.weight + self.bias
        return torch.sparse.mm(adjacency, h @ self.weight) + self.bias


class Propagation:
    """The adjacency a 2-layer GCN reads to compute the outputs of some nodes: ``first`` [R, V], the
    rows of the R nodes those outputs read (layer 1 is computed for these only), and ``second`` [O, R],
    the output nodes' rows restricted to those R nodes. ``outputs`` None: every node (R = O = V)."""

    def __init__(self, adjacency: sp.csr_matrix, outputs: np.ndarray | None, device: torch.device):
        rows = adjacency if outputs is None else adjacency[outputs]
        reach = np.unique(rows.indices)
        self.first = sparse_tensor(adjacency[reach], device)
        self.second = sparse_tensor(rows[:, reach], device)


class GCN(nn.Module):
    """Two graph convolutions with LeakyReLU(0.2) between them and dropout before each (GCNZ / DGP's
    ``d2048,d``). ``forward(node_vectors [V, E], propagation) -> [O, out_dim]``, the outputs of the
    nodes of ``propagation`` (:class:`Propagation`): ``(A_O H) W2``, the same as DGP's ``A_O (H W2)``,
    with H only for the nodes ``A_O`` reads. :meth:`hidden` is the propagated first layer the output
    layer reads, ``A_O · LeakyReLU(layer1)``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.layer1 = GraphConv(in_dim, hidden, dropout)
        self.layer2 = GraphConv(hidden, out_dim, dropout)

    def forward(self, nodes: torch.Tensor, propagation: Propagation) -> torch.Tensor:
        return self.output(self.hidden(nodes, propagation))

    def hidden(self, nodes: torch.Tensor, propagation: Propagation) -> torch.Tensor:
        """[O, hidden]: ``A_O · dropout(LeakyReLU(layer1(nodes)))`` (dropout as in the current mode), so
        that ``forward = hidden · W2 + b2``."""
        h = F.leaky_relu(self.layer1(nodes, propagation.first), 0.2)
        return torch.sparse.mm(propagation.second, self.layer2.dropout(h))

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer applied to :meth:`hidden`: ``hidden · W2 + b2``."""
        return hidden @ self.layer2.weight + self.layer2.bias


def sparse_tensor(matrix: sp.spmatrix, device: torch.device) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced float32 torch COO tensor on ``device``."""
    coo = sp.coo_matrix(matrix)
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(index, values, coo.shape, device=device, check_invariants=True).coalesce()


def cosine_logits(images: torch.Tensor, classes: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale ·`` cosine similarity of every image row with every class row: [N, C]."""
    return scale * F.normalize(images, dim=-1) @ F.normalize(classes, dim=-1).T


def log_scale(temperature: float) -> float:
    """``log(1 / temperature)``, the stored form of a cosine-logit scale."""
    if temperature <= 0:
        raise PipelineError(f"temperature must be > 0, got {temperature}")
    return math.log(1.0 / temperature)
