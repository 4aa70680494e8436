"""Graph-convolutional zero-shot models over a class graph (WordNet, or a k-NN graph of the class vectors).

* ``joint_gcn``: an image MLP and a class GCN trained into one joint space (large-scale ZSL framework).
* ``gcn_regression``: a GCN regressing each class's linear classifier (GCNZ, Wang et al. 2018; DGP).

Both read ``semantics.graph`` when present: the adjacency (``D^-1/2 (A+I) D^-1/2``) and the node
vectors (word vectors of the node names, L2-normalised here), rows 0..C-1 being the classes. Without a
graph (e.g. the built-in synthetic dataset, which has no WordNet mapping) they build one from
``semantics.vectors``: each class linked to its ``k`` most cosine-similar classes, symmetrised, with
the class vectors as node vectors (:func:`pipeline.models.layers.knn_graph`). The GCN sees every node,
unseen classes included (their names or attributes, never their images), as GCNZ does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import Graph, Semantics, Split
from pipeline.models.layers import (
    GCN,
    Standardize,
    TorchZSLModel,
    class_graph,
    cosine_logits,
    l2_normalize,
    log_scale,
    mlp,
    sparse_tensor,
    train_epochs,
)


def _check_features(model: str, data: Split, expected: int) -> None:
    if data.features.ndim != 2 or data.features.shape[1] != expected:
        raise PipelineError(f"{model}: features are {'x'.join(map(str, data.features.shape[1:]))}-d but the model was fitted on "
                            f"{expected}-d features (another backbone?)")


class _GraphInputs:
    """The class graph of some semantics as tensors: normalised node vectors and sparse adjacency."""

    def __init__(self, graph: Graph, device: torch.device):
        self.nodes = torch.as_tensor(l2_normalize(graph.node_vectors), device=device)
        self.adjacency = sparse_tensor(graph.adjacency, device)
        self.n_classes = graph.n_classes


class _JointNet(nn.Module):
    def __init__(self, feature_dim: int, node_dim: int, h: dict[str, Any]):
        super().__init__()
        self.standardize = Standardize(feature_dim)
        self.image = mlp(feature_dim, h["image_hidden"], h["joint_dim"], h["image_dropout"])
        self.gcn = GCN(node_dim, h["gcn_hidden"], h["joint_dim"], h["dropout"])
        self.log_scale = nn.Parameter(torch.tensor(log_scale(h["temperature"])), requires_grad=h["learn_temperature"])

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(self.standardize(x)), dim=-1)

    def classes(self, g: _GraphInputs) -> torch.Tensor:
        return F.normalize(self.gcn(g.nodes, g.adjacency)[:g.n_classes], dim=-1)


class JointGCN(TorchZSLModel):
    """Image MLP + class GCN into a shared ``joint_dim`` space; score = cosine (unit-norm embeddings).

    Image branch: standardised features (training mean/std) -> MLP (``image_hidden`` 0: one linear
    layer, a perceptron). Class branch: 2-layer GCN (LeakyReLU 0.2, dropout) over the class graph;
    rows 0..C-1 of its output are the class embeddings. Loss per mini-batch of images (the GCN runs
    full-graph each step):

    * cross-entropy over the seen classes of ``cos(image, class) / temperature`` (the temperature is
      learnt from its initial value when ``learn_temperature``), plus
    * ``sep_weight`` × separation: the mean over ordered pairs of distinct seen classes of
      ``relu(cos(c_i, c_j) − margin)²``, which keeps the class embeddings at most ``margin`` cosine
      apart and stops the GCN from collapsing neighbouring classes together.
    """

    name = "joint_gcn"
    defaults = {
        "epochs": 20, "lr": 1e-3, "batch_size": 256, "weight_decay": 1e-4,
        "joint_dim": 256, "image_hidden": 512, "gcn_hidden": 512, "image_dropout": 0.2, "dropout": 0.5,
        "temperature": 0.05, "learn_temperature": False, "margin": 0.2, "sep_weight": 1.0,
        "k": 3, "device": "auto",
    }
    grid = {"temperature": [0.05, 0.1], "weight_decay": [1e-4, 1e-2]}

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        graph = class_graph(self.name, semantics, self.hparams["k"])
        return [train.features.shape[1], graph.node_vectors.shape[1]]

    def build(self, sizes: list[int]) -> nn.Module:
        return _JointNet(sizes[0], sizes[1], self.hparams)

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        net: _JointNet = self.trained()  # type: ignore[assignment]
        h = self.hparams
        graph = _GraphInputs(class_graph(self.name, semantics, h["k"]), self.device)
        x = self.tensor(train.features)
        y = torch.as_tensor(positions, device=self.device)
        seen_rows = torch.as_tensor(seen, device=self.device)
        net.standardize.set_from(x)
        off_diagonal = ~torch.eye(len(seen), dtype=torch.bool, device=self.device)

        def step(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(self.device)
            classes = net.classes(graph)[seen_rows]
            loss = F.cross_entropy(cosine_logits(net.images(x[rows]), classes, net.log_scale.exp()), y[rows])
            if h["sep_weight"] > 0 and len(seen) > 1:
                overlap = F.relu((classes @ classes.T)[off_diagonal] - h["margin"])
                loss = loss + h["sep_weight"] * overlap.pow(2).mean()
            return loss

        return train_epochs(net.parameters(), len(y), step, epochs=h["epochs"], batch_size=h["batch_size"],
                            lr=h["lr"], weight_decay=h["weight_decay"], generator=generator, name=self.name)

    def image_embeddings(self, data: Split) -> np.ndarray:
        net: _JointNet = self.trained()  # type: ignore[assignment]
        _check_features(self.name, data, self.sizes[0])
        return self.embed_rows(net.images, data.features)

    @torch.no_grad()
    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        net: _JointNet = self.trained()  # type: ignore[assignment]
        graph = class_graph(self.name, semantics, self.hparams["k"])
        if graph.node_vectors.shape[1] != self.sizes[1]:
            raise PipelineError(f"{self.name}: node vectors are {graph.node_vectors.shape[1]}-d but the model was "
                                f"fitted on {self.sizes[1]}-d ones")
        return net.classes(_GraphInputs(graph, self.device)).float().cpu().numpy()


def ridge_classifiers(features: np.ndarray, positions: np.ndarray, n_seen: int, ridge: float,
                      bias: bool) -> np.ndarray:
    """One-vs-rest ridge classifiers [n_seen, D(+1)] of the seen classes, in closed form.

    ``W = (X̃ᵀ X̃ + α I)⁻¹ X̃ᵀ Y`` with X̃ the features (plus a column of ones when ``bias``), Y the
    0/1 one-hot labels and ``α = ridge · trace(X̃ᵀ X̃) / dim`` (scale-free: ``ridge`` is relative to the
    mean feature energy). The bias is regularised like the weights.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    gram = (x.T @ x).double()
    y = torch.zeros(len(x), n_seen, dtype=torch.float32)
    y[torch.arange(len(x)), torch.as_tensor(positions)] = 1.0
    alpha = ridge * gram.diagonal().mean().item()
    system = gram + alpha * torch.eye(len(gram), dtype=torch.float64)
    w = scipy.linalg.solve(system.numpy(), (x.T @ y).double().numpy(), assume_a="pos")
    return w.T.astype(np.float32)


class GCNRegression(TorchZSLModel):
    """A GCN predicting each class's linear classifier from the class graph (GCNZ / DGP style).

    Targets: one-vs-rest ridge classifiers of the seen classes fitted in closed form on the training
    features (:func:`ridge_classifiers`; ``bias`` adds an intercept), each L2-normalised as GCNZ does.
    The 2-layer GCN maps the node vectors to [V, D(+1)]; loss = mean over seen classes of
    ``‖normalise(prediction) − target‖²`` (= 2 − 2·cosine: MSE and cosine losses coincide on unit
    vectors), trained full-graph, one AdamW step per epoch. At test ``class_embeddings`` are the
    L2-normalised predictions for all classes and ``image_embeddings`` the raw features (with a
    trailing 1 when ``bias``): the score is the predicted classifier's output.
    """

    name = "gcn_regression"
    defaults = {
        "epochs": 300, "lr": 1e-3, "weight_decay": 5e-4, "gcn_hidden": 1024, "dropout": 0.5,
        "ridge": 1.0, "bias": True, "k": 3, "device": "auto",
    }
    grid = {"ridge": [0.1, 1.0], "weight_decay": [5e-4, 5e-3]}

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        graph = class_graph(self.name, semantics, self.hparams["k"])
        return [graph.node_vectors.shape[1], train.features.shape[1] + int(self.hparams["bias"])]

    def build(self, sizes: list[int]) -> nn.Module:
        return GCN(sizes[0], self.hparams["gcn_hidden"], sizes[1], self.hparams["dropout"])

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        gcn: GCN = self.trained()  # type: ignore[assignment]
        h = self.hparams
        graph = _GraphInputs(class_graph(self.name, semantics, h["k"]), self.device)
        targets = self.tensor(l2_normalize(ridge_classifiers(train.features, positions, len(seen), h["ridge"],
                                                             h["bias"])))
        seen_rows = torch.as_tensor(seen, device=self.device)

        def step(_: torch.Tensor) -> torch.Tensor:
            predicted = F.normalize(gcn(graph.nodes, graph.adjacency)[seen_rows], dim=-1)
            return (predicted - targets).pow(2).sum(dim=1).mean()

        return train_epochs(gcn.parameters(), 1, step, epochs=h["epochs"], batch_size=1, lr=h["lr"],
                            weight_decay=h["weight_decay"], generator=generator, name=self.name)

    def image_embeddings(self, data: Split) -> np.ndarray:
        self.trained()
        _check_features(self.name, data, self.sizes[1] - int(self.hparams["bias"]))
        x = np.asarray(data.features, dtype=np.float32)
        return np.hstack([x, np.ones((len(x), 1), np.float32)]) if self.hparams["bias"] else x.copy()

    @torch.no_grad()
    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        gcn: GCN = self.trained()  # type: ignore[assignment]
        graph = class_graph(self.name, semantics, self.hparams["k"])
        if graph.node_vectors.shape[1] != self.sizes[0]:
            raise PipelineError(f"{self.name}: node vectors are {graph.node_vectors.shape[1]}-d but the model was "
                                f"fitted on {self.sizes[0]}-d ones")
        g = _GraphInputs(graph, self.device)
        return F.normalize(gcn(g.nodes, g.adjacency)[:g.n_classes], dim=-1).float().cpu().numpy()
