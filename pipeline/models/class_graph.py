"""Class graphs of the models that read one: the WordNet graph of the semantics file (checked against the
classes and the semantics source) or a k-NN graph of the class vectors, and class vectors averaged over
it (``graph_steps``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.models.base import Graph, Semantics
from pipeline.models.memo import by_content, by_identity
from pipeline.norms import l2_normalize


@by_content(4)  # selection asks for the same classes' graph at every grid point and fold
def knn_graph(vectors: np.ndarray, k: int) -> Graph:
    """A class graph from class vectors [C, S]: every class linked to its ``k`` most cosine-similar
    classes, ties to the lower class index (links undirected: i~j when either picks the other); node
    vectors are a copy of ``vectors``. Kept for equal vectors (read-only: not to be modified)."""
    vectors = np.array(vectors, dtype=np.float32)  # a copy: the kept graph's, never the caller's
    n = len(vectors)
    k = min(int(k), n - 1)
    edges = np.zeros((0, 2), dtype=np.int64)
    if k > 0:
        unit = l2_normalize(vectors)
        rows = max(1, _KNN_CELLS // n)  # similarities held at once: ImageNet-21K's 21,842² would be 1.9 GB
        neighbours = np.concatenate([_nearest(unit[start:start + rows], unit, start, k)
                                     for start in range(0, n, rows)])
        edges = np.stack([np.repeat(np.arange(n), k), neighbours.ravel()], axis=1)
    vectors.flags.writeable = edges.flags.writeable = False
    return Graph(edges, vectors, n)


_KNN_CELLS = 2 ** 24  # similarities a chunk of knn_graph's rows holds (64 MiB)


def _nearest(block: np.ndarray, unit: np.ndarray, start: int, k: int) -> np.ndarray:
    """[B, k] the ``k`` most cosine-similar other rows of ``unit`` for rows ``start``.. of it (``block``),
    in order of similarity, ties to the lower index (what a stable sort of each row gives)."""
    similarity = block @ unit.T
    similarity[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not itself
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1:k]  # the k-th highest similarity of each row
    out = np.empty((len(block), k), dtype=np.int64)
    for i, row in enumerate(similarity):
        candidates = np.flatnonzero(row >= kth[i])  # k of them, more under ties; in index order
        out[i] = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
    return out


def class_graph(model: str, semantics: Semantics, k: int) -> Graph:
    """``semantics.graph`` when there is one (checked against the C classes and, when the semantics
    source is a ``text:<encoder>``, against the encoders of its node vectors: one of them), else
    :func:`knn_graph` of ``semantics.vectors`` with ``k`` neighbours."""
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
    if encoder and graph.node_encoder and encoder not in graph.node_encoder.split("+"):
        raise PipelineError(f"{model}: the WordNet graph's node vectors come from {graph.node_encoder} but the "
                            f"semantics source is {source}; train with --source "
                            f"text:{graph.node_encoder.split('+')[0]} or "
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
    the encoder of the semantics source alone (concatenated ones, ``minilm+glove``, are not in its space)."""
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
