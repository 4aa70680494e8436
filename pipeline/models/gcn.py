"""Graph-convolutional zero-shot models over a class graph (WordNet, or a k-NN graph of the class vectors).

* ``gcn_regression``: GCNZ / DGP (Wang et al. 2018; Kampffmeyer et al. 2019): a GCN predicts every
  class's linear classifier from the word vectors of the graph's nodes, regressing the classifiers of
  the seen classes; an image is scored by the predicted classifiers.
* ``joint_gcn``: the same class GCN into a joint space shared with the images, scored by cosine,
  with a separation loss that keeps every class away from the seen classes' embeddings there.

**Anchors** (what the GCN regresses, one per seen class): the seen classes' linear classifiers
``[weight, bias]``, L2-normalised as GCNZ does: the backbone's own classifier rows when the feature
store records its head (the ImageNet protocol of GCNZ and DGP), else ridge fits on the cached
features (:mod:`pipeline.models.classifiers`; ``supervision`` forces either).

**Fit** (:func:`fit_gcn`): DGP's 2-layer GCN (LeakyReLU 0.2, dropout before each layer, Xavier
init, bias after propagation) over ``D^-1 (A + I)`` (``adjacency: dgp``, DGP's) or
``D^-1/2 (A + I) D^-1/2``. Its output layer is first solved in closed form (ridge regression of the
anchors on the propagated first layer of the seen nodes, dropout off), then ``epochs`` of Adam on
DGP's loss ``Σ ‖normalise(out_i) − anchor_i‖² / 2S`` refine both layers. The output layer emits
coordinates in an orthonormal basis of the anchors' span (at most S dimensions instead of D + 1):
outside that span a prediction only adds distance to every anchor, so the basis loses nothing the
loss rewards, and each epoch costs a fraction of DGP's.

Without a graph (e.g. the built-in synthetic dataset, which has no WordNet mapping) both build one
from ``semantics.vectors`` (:func:`pipeline.models.class_graph.knn_graph`). The GCN sees every node,
unseen classes included (their names, never their images or classifier rows), as GCNZ does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import ADJACENCIES, Semantics, Split, epoch_bar
from pipeline.models.class_graph import class_graph, smoothed_class_vectors, smoothed_nodes
from pipeline.models.classifiers import seen_classifiers, with_bias_input, with_classifier
from pipeline.models.conse import convex_combination
from pipeline.models.layers import GCN, Propagation
from pipeline.models.memo import by_content, by_identity, fingerprint
from pipeline.models.torch_model import TorchZSLModel
from pipeline.norms import l2_normalize

log = logging.getLogger(__name__)


class _GraphInputs:
    """The class graph of some semantics as tensors: node vectors (unit norm, smoothed ``graph_steps``
    times) and the adjacency the GCN reads to compute the class nodes' outputs."""

    def __init__(self, model: str, semantics: Semantics, h: dict[str, Any], device: torch.device):
        if h["adjacency"] not in ADJACENCIES:
            raise PipelineError(f"{model}: adjacency {h['adjacency']!r} unknown; use one of {ADJACENCIES}")
        graph = class_graph(model, semantics, h["k"])
        nodes = smoothed_nodes(graph, h["graph_steps"])
        adjacency = graph.adjacency(h["adjacency"])
        self.nodes = torch.tensor(nodes, device=device)  # a copy: the smoothed vectors are kept read-only
        self.adjacency, self.n_classes = adjacency, graph.n_classes  # for the Adam steps' class batches
        self.propagation = Propagation(adjacency, np.arange(graph.n_classes), device)  # the only outputs read
        # what these tensors are made of, for results kept by content (:func:`class_hidden`), hashed once here
        # rather than on every call
        self.content = tuple(fingerprint(v) for v in (nodes, adjacency.data, adjacency.indices, adjacency.indptr,
                                                      graph.n_classes, str(device)))


def graph_inputs(model: str, semantics: Semantics, h: dict[str, Any], device: torch.device) -> _GraphInputs:
    """:class:`_GraphInputs` of ``semantics`` for the hyperparameters it depends on, built once per semantics
    object (selection fits 40 models on the same semantics; ImageNet-21K's graph takes 75 ms to smooth and
    hash)."""
    return _graph_inputs(model, semantics, h["adjacency"], h["k"], h["graph_steps"], str(device))


@by_identity(4)
def _graph_inputs(model: str, semantics: Semantics, adjacency: str, k: int, graph_steps: int,
                  device: str) -> _GraphInputs:
    h = {"adjacency": adjacency, "k": k, "graph_steps": graph_steps}
    return _GraphInputs(model, semantics, h, torch.device(device))


def _first_layer_content(gcn: GCN, g: _GraphInputs) -> tuple[Any, ...]:
    return (*g.content, *(p.detach().cpu().numpy() for p in gcn.layer1.parameters()))


@by_content(2, _first_layer_content)  # selection: one per graph_steps value of its grid
def class_hidden(gcn: GCN, g: _GraphInputs) -> torch.Tensor:
    """[C, hidden] ``gcn.hidden`` of the class nodes with dropout off, kept by the content of the graph and
    of the first layer: every fit of a selection starts from the same seeded first layer, so the closed
    forms and validation embeddings of all its grid points share one (not to be modified in place; the
    two kept take 2 · C · hidden floats, 344 MB for ImageNet-21K's 21K classes)."""
    training = gcn.training
    gcn.eval()
    with torch.no_grad():
        hidden = gcn.hidden(g.nodes, g.propagation)
    gcn.train(training)
    return hidden


class _AnchoredGCN(nn.Module):
    """A :class:`GCN` whose outputs are coordinates in ``basis`` [r, D'] (orthonormal rows): the class
    embedding of node v is ``normalise(gcn(v)) @ basis``, a unit vector in the anchors' span."""

    def __init__(self, node_dim: int, out_dim: int, rank: int, h: dict[str, Any]):
        super().__init__()
        self.gcn = GCN(node_dim, h["hidden"], rank, h["dropout"])
        self.register_buffer("basis", torch.zeros(rank, out_dim))

    def coordinates(self, g: _GraphInputs, rows: np.ndarray | None = None) -> torch.Tensor:
        """[C, r] unit-norm embeddings of the class nodes in basis coordinates, or of the class nodes ``rows``
        only (their output layer alone, on the kept first layer; dropout off, no grad)."""
        hidden = class_hidden(self.gcn, g)
        return F.normalize(self.gcn.output(hidden if rows is None else hidden[torch.as_tensor(rows)]), dim=-1)


def _closed_form_output_layer(net: _AnchoredGCN, g: _GraphInputs, seen: torch.Tensor, targets: torch.Tensor,
                              ridge: float) -> float:
    """Set the GCN's output layer to the ridge solution mapping the seen nodes' propagated first layer
    onto ``targets`` [S, r] (dropout off): ``W2 = Zcᵀ (Zc Zcᵀ + α I)⁻¹ (T − T̄)``, ``b2 = T̄ − Z̄ W2``, Zc the
    centred rows, α = ``ridge`` · mean of diag(Zc Zcᵀ). An S x S system, whatever the hidden width.
    Returns DGP's loss of the result (eval mode)."""
    net.eval()
    with torch.no_grad():
        z_mean, zc, gram = _centred_gram(net.gcn, g, seen.cpu().numpy())
        t = targets.double()
        t_mean = t.mean(0)
        alpha = ridge * gram.diagonal().mean().clamp_min(1e-12)
        dual = torch.linalg.solve(gram + alpha * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), t - t_mean)
        w2 = zc.T @ dual
        net.gcn.layer2.weight.copy_(w2.float())
        net.gcn.layer2.bias.copy_((t_mean - z_mean @ w2).float())
        predicted = F.normalize(net.gcn.output((zc + z_mean).float()), dim=-1)
        loss = (predicted - targets).pow(2).sum().item() / (2 * len(targets))
    net.train()
    return loss


@by_content(2, lambda gcn, g, seen: (*_first_layer_content(gcn, g), seen))  # a fold's fits: every ridge, supervision
def _centred_gram(gcn: GCN, g: _GraphInputs, seen: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The closed form's float64 inputs for the ``seen`` nodes: the mean Z̄ [H] of their propagated first
    layer (:func:`class_hidden`), the centred rows Zc [S, H] and Zc Zcᵀ [S, S] (not to be modified)."""
    z = class_hidden(gcn, g)[torch.as_tensor(seen)].double()
    z_mean = z.mean(0)
    zc = z - z_mean
    return z_mean, zc, zc @ zc.T


@by_content(12)  # selection: two anchor sets (head, ridge) per validation fold, then trainval
def anchor_basis(anchor_rows: np.ndarray) -> np.ndarray:
    """[r, D'] float32 orthonormal rows spanning the anchors [S, D'] (QR in float64; r = min(S, D'))."""
    q, _ = torch.linalg.qr(torch.as_tensor(anchor_rows, dtype=torch.float64).T)  # [D', r]
    return q.T.float().numpy()


@dataclass(frozen=True)
class Separation:
    """joint_gcn's separation term: ``weight`` × the mean over (class, seen class) pairs of
    ``relu(cos − margin)²`` (a class against itself counts 0): it keeps every class, unseen ones included,
    from collapsing onto a seen class's embedding."""

    weight: float
    margin: float


@dataclass(frozen=True)
class ClassBatch:
    """The class nodes one Adam step reads: ``rows`` (sorted), the drawn seen classes' positions among
    them (``seen_at``) and in the anchors (``anchors``), and the weights that make the step's losses
    unbiased estimates of the full ones (``seen_weight``: seen classes / drawn ones; ``other_weight``:
    likewise for the other classes; both 1 when every class the losses read is in the batch)."""

    rows: np.ndarray
    seen_at: np.ndarray
    anchors: np.ndarray
    seen_weight: float
    other_weight: float

    @classmethod
    def draw(cls, seen: np.ndarray, n_classes: int, size: int, others: bool) -> ClassBatch:
        """The classes DGP's loss reads (``seen``) and, with ``others``, the separation's (every class), or
        when they are more than ``size`` a random draw of ``size`` of them: half seen, half others (only
        seen without ``others``), seeded through torch as the dropout masks are."""
        pool = np.arange(n_classes) if others else np.sort(seen)
        if len(pool) <= size:
            return cls(pool, np.searchsorted(pool, seen), np.arange(len(seen)), 1.0, 1.0)
        generator = np.random.default_rng(int(torch.randint(2**62, (1,))))
        n_seen = min(len(seen), size // 2 if others else size)
        anchors = np.sort(generator.choice(len(seen), n_seen, replace=False))
        other = np.setdiff1d(np.arange(n_classes), seen) if others else np.empty(0, np.int64)
        n_other = min(len(other), size - n_seen)
        drawn = generator.choice(other, n_other, replace=False) if n_other else np.empty(0, np.int64)
        rows = np.union1d(seen[anchors], drawn)
        return cls(rows, np.searchsorted(rows, seen[anchors]), anchors, len(seen) / n_seen,
                   len(other) / max(n_other, 1))


def fit_gcn(net: _AnchoredGCN, g: _GraphInputs, seen: np.ndarray, anchor_rows: np.ndarray, h: dict[str, Any],
            separation: Separation | None = None, name: str = "gcn") -> list[float]:
    """Fit ``net`` to the unit-norm ``anchor_rows`` [S, D'] of the ``seen`` nodes (module docstring):
    basis, closed-form output layer, then ``h["epochs"]`` Adam steps of DGP's loss (plus ``separation``
    when given), each on the outputs of one :class:`ClassBatch` of at most ``h["class_batch"]`` classes
    (all of them when they fit: IN200's 200), so a step touches only the nodes those outputs read.
    Returns DGP's loss after each stage (eval mode)."""
    device = net.basis.device
    net.basis.copy_(torch.tensor(anchor_basis(anchor_rows), device=device))
    targets = torch.as_tensor(anchor_rows, device=device) @ net.basis.T  # [S, r], still unit norm
    seen_rows = torch.as_tensor(seen, device=device)

    def eval_loss() -> float:
        net.eval()
        with torch.no_grad():
            value = (net.coordinates(g, seen) - targets).pow(2).sum().item() / (2 * len(seen))
        net.train()
        return value

    losses = [_closed_form_output_layer(net, g, seen_rows, targets, h["ridge"])]
    if h["epochs"] > 0:
        optimizer = torch.optim.Adam(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"],
                                     fused=device.type in ("cpu", "cuda"))  # one kernel: 1.5 ms a step, not 4.5
        bar = epoch_bar(h["epochs"], name)
        for _ in bar:
            batch = ClassBatch.draw(seen, g.n_classes, h["class_batch"], separation is not None)
            full = len(batch.rows) == g.n_classes
            propagation = g.propagation if full else Propagation(g.adjacency, batch.rows, device)
            coordinates = F.normalize(net.gcn(g.nodes, propagation), dim=-1)  # [len(rows), r]
            seen_at = torch.as_tensor(batch.seen_at, device=device)
            loss = (coordinates[seen_at] - targets[torch.as_tensor(batch.anchors, device=device)]).pow(2).sum() \
                * batch.seen_weight / (2 * len(seen))  # DGP's loss
            if separation is not None:
                loss = loss + separation.weight * _separation(coordinates, seen_at, batch, g.n_classes, len(seen),
                                                              separation.margin, full)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        losses.append(eval_loss())
    return losses


def _separation(coordinates: torch.Tensor, seen_at: torch.Tensor, batch: ClassBatch, n_classes: int, n_seen: int,
                margin: float, full: bool) -> torch.Tensor:
    """The mean of ``relu(cos − margin)²`` over (class, seen class) pairs (:class:`Separation`), from a batch's
    class ``coordinates`` [R, r] and its seen ones at ``seen_at``: exact for a full batch, else each pair
    weighted by the draw's shares (an unbiased estimate)."""
    cosine = coordinates @ coordinates[seen_at].T  # [R, drawn seen]
    cosine[seen_at, torch.arange(len(seen_at), device=cosine.device)] = -1.0  # not against itself
    penalty = F.relu(cosine - margin).pow(2)
    if full:
        return penalty.mean()
    is_seen = torch.zeros(len(coordinates), dtype=torch.bool, device=cosine.device)
    is_seen[seen_at] = True
    rows = penalty[is_seen].sum() * batch.seen_weight + penalty[~is_seen].sum() * batch.other_weight
    return rows * batch.seen_weight / (n_classes * n_seen)


class _AnchoredModel(TorchZSLModel[_AnchoredGCN]):
    """What both GCN models share: anchors, the anchored GCN, and the class embeddings it predicts."""

    selection_folds = 5  # the closed form stands in for the Adam epochs during selection

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.seen_classifiers: tuple[np.ndarray, np.ndarray] | None = None  # the anchors' rows [S, D + 1], classes

    def _graph_inputs(self, semantics: Semantics) -> _GraphInputs:
        """The class graph of ``semantics`` as tensors (:func:`graph_inputs`)."""
        return graph_inputs(self.name, semantics, self.hparams, self.device)

    def reads_graph(self, semantics: Semantics) -> bool:
        return semantics.graph is not None

    def stand_in(self) -> dict[str, Any]:
        return {**self.hparams, "epochs": 0}

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        graph = class_graph(self.name, semantics, self.hparams["k"])
        dim = train.features.shape[1] + 1
        return [graph.node_vectors.shape[1], dim, min(len(np.unique(train.labels)), dim)]  # rank: see train_net

    def build(self, sizes: list[int]) -> _AnchoredGCN:
        return _AnchoredGCN(sizes[0], sizes[1], max(sizes[2], 1), self.hparams)

    def fit(self, train: Split, seen: np.ndarray, semantics: Semantics, seed: int) -> dict[str, Any]:
        result = super().fit(train, seen, semantics, seed)
        return {**result, "supervision": self.supervision}

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        h = self.hparams
        rows, self.supervision = seen_classifiers(self.name, train, positions, seen, semantics, h["supervision"],
                                                  h["feature_ridge"])
        rows, seen = with_classifier(rows, seen)
        self.seen_classifiers = (rows, seen)
        rows = l2_normalize(rows)
        rank = min(len(rows), rows.shape[1])  # the anchors' span (seen classes without images included)
        if rank != self.sizes[2]:
            self.sizes[2] = rank
            self.net = self.build(self.sizes).to(self.device).train()
        g = self._graph_inputs(semantics)
        log.info("%s: %d anchors from %s supervision, graph of %d nodes", self.name, len(rows), self.supervision,
                 len(g.nodes))
        net = self.trained()
        return fit_gcn(net, g, seen, rows, h, self.separation(), self.name)

    def separation(self) -> Separation | None:
        """The term added to DGP's loss during the Adam epochs (None: none)."""
        return None

    def _check_features(self, data: Split) -> np.ndarray:
        self.trained()
        if data.features.ndim != 2 or data.features.shape[1] != self.sizes[1] - 1:
            raise PipelineError(f"{self.name}: features are {'x'.join(map(str, data.features.shape[1:]))}-d but the "
                                f"model was fitted on {self.sizes[1] - 1}-d features (another backbone?)")
        return with_bias_input(data.features)

    @torch.no_grad()
    def _coordinates(self, semantics: Semantics, rows: np.ndarray | None = None) -> torch.Tensor:
        net = self.trained()
        g = self._graph_inputs(semantics)
        if g.nodes.shape[1] != self.sizes[0]:
            raise PipelineError(f"{self.name}: node vectors are {g.nodes.shape[1]}-d but the model was "
                                f"fitted on {self.sizes[0]}-d ones")
        return net.coordinates(g, rows)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        return self.class_embeddings_of(semantics, None)


_SHARED_DEFAULTS = {
    "hidden": 2048, "dropout": 0.5, "adjacency": "dgp", "lr": 1e-3, "weight_decay": 5e-4, "ridge": 0.1,
    "supervision": "auto", "feature_ridge": 1.0, "k": 3, "graph_steps": 0, "class_batch": 512,
}


class GCNRegression(_AnchoredModel):
    """GCNZ / DGP: the GCN predicts each class's classifier ``[w, b]`` (unit norm); an image's score for a
    class is ``[x, 1] · prediction``, as DGP's ``evaluate_imagenet.py`` scores. Defaults are DGP's
    (hidden 2048, dropout 0.5, row-normalised adjacency, Adam lr 1e-3, weight decay 5e-4) except the
    schedule: closed-form output layer, then ``epochs`` (DGP: 3000 from a random start)."""

    name = "gcn_regression"
    defaults = {**_SHARED_DEFAULTS, "epochs": 0}
    search_space = {"ridge": [0.1, 1.0], "supervision": ["auto", "ridge"], "graph_steps": [0, 2]}

    def image_embeddings(self, data: Split) -> np.ndarray:
        return self._check_features(data)

    def class_embeddings_of(self, semantics: Semantics, rows: np.ndarray | None) -> np.ndarray:
        net = self.trained()
        return (self._coordinates(semantics, rows) @ net.basis).float().cpu().numpy()


class JointGCN(_AnchoredModel):
    """Joint space + GCN: the joint space is the span of the seen classes' anchors (r ≤ S dimensions).
    Images enter it by the anchors' own linear map (``[x, 1]`` projected onto the anchor basis), classes
    by the GCN; both are L2-normalised, so the score is a cosine. During the Adam epochs (default 100
    after the closed form; selection validates the closed form and refines the winner)
    ``sep_weight`` × separation joins DGP's loss: the mean over (class, other seen class) pairs of
    ``relu(cos − margin)²``, which keeps every class, unseen ones included, from collapsing onto a
    seen class's embedding.

    A second route, weighted by ``semantic_weight`` (chosen on validation; 0 turns it off), scores the
    class vectors (``train.source``) as ConSE does: an image is the mean of the vectors
    of its ``top`` most probable seen classes, weighted by ``softmax(logits / temperature)`` of the
    anchors' classifiers; the score adds ``semantic_weight`` × its cosine with the class's vector. The GCN
    route ranks the specific classes near the seen ones, the semantic route the general ones the
    probable seen classes share (ImageNet-21K's "dog" for a photo of a spaniel); both embeddings are
    one vector each, concatenated, so scoring stays one inner product. ``route_steps`` > 0 averages the
    route's class vectors over the class graph first, as ConSE's ``graph_steps`` (off by default and not
    searched: with MiniLM it lifts IN200's CZSL Hit@1 from 0.25 to 0.30 and costs ImageNet-21K's 0.1,
    which validation cannot see; README, *Real images: IN200*)."""

    name = "joint_gcn"
    defaults = {**_SHARED_DEFAULTS, "epochs": 100, "margin": 0.5, "sep_weight": 1.0,
                "semantic_weight": 0.5, "temperature": 1.0, "top": 10, "route_steps": 0}
    search_space = {"ridge": [0.1, 1.0], "supervision": ["auto", "ridge"], "graph_steps": [0, 2],
            "semantic_weight": [0.0, 0.5, 1.0], "temperature": [1.0, 0.1]}
    inference_hparams = ("semantic_weight", "temperature", "top")

    def separation(self) -> Separation | None:
        h = self.hparams
        return Separation(h["sep_weight"], h["margin"]) if h["sep_weight"] > 0 else None

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        self.route: tuple[np.ndarray, np.ndarray] | None = None  # the semantic route's seen classifiers, vectors

    def _seen(self) -> tuple[np.ndarray, np.ndarray]:
        if self.route is None:
            raise PipelineError(f"{self.name}: the model is not trained; call fit or load_state first")
        return self.route

    def image_embeddings(self, data: Split) -> np.ndarray:
        net = self.trained()
        x = self._check_features(data)
        graph = F.normalize(torch.as_tensor(x, device=self.device) @ net.basis.T, dim=-1).cpu().numpy()
        weight = self.hparams["semantic_weight"]
        if weight == 0:
            return graph
        classifiers, vectors = self._seen()
        semantic = convex_combination(x @ classifiers.T, vectors, self.hparams["temperature"], self.hparams["top"])
        return np.hstack([graph, np.sqrt(weight) * semantic]).astype(np.float32)

    def class_embeddings_of(self, semantics: Semantics, rows: np.ndarray | None) -> np.ndarray:
        graph = self._coordinates(semantics, rows).float().cpu().numpy()
        weight = self.hparams["semantic_weight"]
        if weight == 0:
            return graph
        vectors = self._route_vectors(semantics)
        vectors = vectors if rows is None else vectors[rows]
        if vectors.shape[1] != self._seen()[1].shape[1]:
            raise PipelineError(f"{self.name}: class vectors are {vectors.shape[1]}-d but the model was fitted on "
                                f"{self._seen()[1].shape[1]}-d ones")
        return np.hstack([graph, np.sqrt(weight) * l2_normalize(vectors)]).astype(np.float32)

    def fit(self, train: Split, seen: np.ndarray, semantics: Semantics, seed: int) -> dict[str, Any]:
        result = super().fit(train, seen, semantics, seed)
        assert self.seen_classifiers is not None
        rows, classes = self.seen_classifiers
        self.route = (rows, l2_normalize(self._route_vectors(semantics)[classes]))
        return result

    def _route_vectors(self, semantics: Semantics) -> np.ndarray:
        """[C, E] the class vectors the semantic route reads (averaged ``route_steps`` times over the graph)."""
        return smoothed_class_vectors(self.name, semantics, self.hparams["route_steps"], self.hparams["k"])

    def state(self) -> dict[str, Any]:
        classifiers, vectors = self._seen()
        return {**super().state(), "classifiers": classifiers.copy(), "seen_vectors": vectors.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if "classifiers" not in state:
            raise PipelineError(f"{self.name}: the checkpoint predates the semantic route (no seen classifiers); "
                                "retrain it: zsl train --model joint_gcn ...")
        self.route = (np.asarray(state["classifiers"], np.float32), np.asarray(state["seen_vectors"], np.float32))
