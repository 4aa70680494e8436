"""Pieces the trainable models share: input checks, MLPs, the GCN layer, class graphs, cosine logits,
the mini-batch training loop and the state round-trip of a torch model.
"""
from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.models.base import Graph, Semantics, Split, ZSLModel, epoch_bar, seed_everything
from pipeline.models.memo import by_identity

log = logging.getLogger(__name__)
NetT = TypeVar("NetT", bound=nn.Module)
CHUNK = 8192  # rows per forward pass when embedding many images


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def seen_targets(model: str, train: Split, seen: np.ndarray, semantics: Semantics) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``seen`` (int64, as given) and each training image's position in it ([N] int64).

    Raises PipelineError when the inputs disagree: no images, labels outside ``seen``, repeated seen
    classes, or class indices beyond the C rows of ``semantics.vectors``.
    """
    seen = np.asarray(seen, dtype=np.int64).ravel()
    labels = np.asarray(train.labels, dtype=np.int64).ravel()
    n_classes = len(semantics.vectors)
    if len(labels) == 0 or len(seen) == 0:
        raise PipelineError(f"{model}: nothing to train on ({len(labels)} images, {len(seen)} seen classes)")
    if len(train.features) != len(labels):
        raise PipelineError(f"{model}: {len(train.features)} feature rows but {len(labels)} labels")
    if len(np.unique(seen)) != len(seen):
        raise PipelineError(f"{model}: the seen class indices repeat")
    if seen.min() < 0 or seen.max() >= n_classes:
        raise PipelineError(f"{model}: seen class indices must lie in 0..{n_classes - 1} (rows of the semantics)")
    position = np.full(n_classes, -1, dtype=np.int64)
    position[seen] = np.arange(len(seen))
    if labels.min() < 0 or labels.max() >= n_classes or (position[labels] < 0).any():
        raise PipelineError(f"{model}: training labels must all be seen classes (models train on seen classes only)")
    return seen, position[labels]


def seen_tags(model: str, train: Split, seen: np.ndarray, semantics: Semantics) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``seen`` and the training images' tags over it ([N, S] bool) for multi-label models.

    Tags of other classes (unseen ones) are dropped: models never see them. Single-label data
    gives one-hot rows (its labels must be seen classes, as for :func:`seen_targets`).
    """
    if train.tags is None:
        seen, positions = seen_targets(model, train, seen, semantics)
        return seen, np.eye(len(seen), dtype=bool)[positions]
    seen = np.asarray(seen, dtype=np.int64).ravel()
    n_classes = len(semantics.vectors)
    if len(train) == 0 or len(seen) == 0 or len(np.unique(seen)) != len(seen):
        raise PipelineError(f"{model}: need images and distinct seen tags ({len(train)} images, {len(seen)} tags)")
    if seen.min() < 0 or seen.max() >= n_classes or train.tags.shape[1] != n_classes:
        raise PipelineError(f"{model}: {train.tags.shape[1]} tags in the data, {n_classes} rows of semantics; "
                            "rebuild the semantics file for this feature file")
    return seen, train.tags[:, seen]


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


def knn_graph(vectors: np.ndarray, k: int) -> Graph:
    """A class graph from class vectors [C, S]: every class linked to its ``k`` most cosine-similar
    classes (links undirected: i~j when either picks the other); node vectors are ``vectors`` themselves."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    k = min(int(k), n - 1)
    edges = np.zeros((0, 2), dtype=np.int64)
    if k > 0:
        unit = l2_normalize(vectors)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        # stable sort: ties broken by class index, so the graph is a function of the vectors alone
        neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        edges = np.stack([np.repeat(np.arange(n), k), neighbours.ravel()], axis=1)
    return Graph(edges, vectors, n)


def class_graph(model: str, semantics: Semantics, k: int) -> Graph:
    """``semantics.graph`` when there is one (checked against the C classes and, when the semantics
    source is a ``text:<encoder>``, against the encoder of its node vectors), else :func:`knn_graph` of
    ``semantics.vectors`` with ``k`` neighbours."""
    graph = semantics.graph
    n_classes = len(semantics.vectors)
    if graph is None:
        return knn_graph(semantics.vectors, k)
    n_nodes = len(graph.node_vectors)
    if graph.edges.size and (graph.edges.min() < 0 or graph.edges.max() >= n_nodes):
        raise PipelineError(f"{model}: graph edges name nodes beyond its {n_nodes} node vectors; rebuild the semantics file")
    if graph.n_classes != n_classes or n_nodes < n_classes:
        raise PipelineError(f"{model}: the graph has {graph.n_classes} class nodes but the semantics {n_classes} "
                            "classes; rebuild the semantics file for this feature file")
    source = semantics.source
    encoder = source.partition(":")[2] if source and source.startswith("text:") else None
    if encoder and graph.node_encoder and encoder != graph.node_encoder:
        raise PipelineError(f"{model}: the WordNet graph's node vectors come from {graph.node_encoder} but the "
                            f"semantics source is {source}; train with --source text:{graph.node_encoder} or "
                            f"rebuild the semantics with --graph-text {encoder}")
    return graph


@by_identity(4)  # selection fits every grid point on the same graph; ImageNet-21K's takes 70 ms a smoothing
def smoothed_nodes(graph: Graph, steps: int) -> np.ndarray:
    """[V, E] unit-norm node vectors of ``graph`` multiplied ``steps`` times by ``D^-1 (A + I)``: each
    node becomes the mean of itself and its neighbours, ``steps`` times (``steps`` 0: unit norm only).
    Kept for the graph object (read-only: not to be modified)."""
    vectors, adjacency = l2_normalize(graph.node_vectors), graph.adjacency("dgp")
    for _ in range(steps):
        vectors = adjacency @ vectors
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors.flags.writeable = False
    return vectors


def smoothed_class_vectors(model: str, semantics: Semantics, steps: int, k: int) -> np.ndarray:
    """[C, E] class vectors averaged ``steps`` times over the class graph (:func:`smoothed_nodes`, class
    rows): the WordNet graph when its node vectors come from the encoder of the semantics source
    (``text:<encoder>``), else the ``k``-NN graph of ``semantics.vectors`` (attributes, another encoder,
    no WordNet graph). ``steps`` 0: ``semantics.vectors`` as they are."""
    if steps == 0:
        return np.asarray(semantics.vectors, dtype=np.float32)
    graph = class_graph(model, semantics, k) if _smooths_over_wordnet(semantics) else knn_graph(semantics.vectors, k)
    return smoothed_nodes(graph, steps)[:graph.n_classes]


def _smooths_over_wordnet(semantics: Semantics) -> bool:
    """Whether :func:`smoothed_class_vectors` averages over ``semantics.graph``: its node vectors come from
    the encoder of the semantics source."""
    graph = semantics.graph
    return graph is not None and bool(graph.node_encoder) and semantics.source == f"text:{graph.node_encoder}"


class SmoothedClassVectors:
    """For a model whose class side is ``semantics.vectors`` and whose hyperparameters include
    ``graph_steps`` and ``k``: its class vectors (:func:`smoothed_class_vectors`), and ``reads_graph``
    when it smooths them over the WordNet graph. Mix in before :class:`ZSLModel`."""

    name: str
    hparams: dict[str, Any]

    def reads_graph(self, semantics: Semantics) -> bool:
        return self.hparams["graph_steps"] > 0 and _smooths_over_wordnet(semantics)

    def class_vectors(self, semantics: Semantics) -> np.ndarray:
        """[C, E] the class vectors this model reads."""
        return smoothed_class_vectors(self.name, semantics, self.hparams["graph_steps"], self.hparams["k"])


def cosine_logits(images: torch.Tensor, classes: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale ·`` cosine similarity of every image row with every class row: [N, C]."""
    return scale * F.normalize(images, dim=-1) @ F.normalize(classes, dim=-1).T


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


def log_scale(temperature: float) -> float:
    """``log(1 / temperature)``, the stored form of a cosine-logit scale."""
    if temperature <= 0:
        raise PipelineError(f"temperature must be > 0, got {temperature}")
    return math.log(1.0 / temperature)
