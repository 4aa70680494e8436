"""The one interface every zero-shot model implements, and the cached inputs it trains on.

A model maps image features to image embeddings [N, J] and class semantics to class embeddings
[C, J]; an image's score for a class is the inner product of the two (models that score by
cosine similarity return L2-normalised embeddings). Models that embed an image as a matrix of K
vectors (SDL) return [N, K, J]; the score is then the maximum over the K inner products.
Models train on seen classes only.
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.grid import GridSource
from pipeline.models.memo import by_content

ADJACENCIES = ("dgp", "symmetric")


@by_content(8)
def normalized_adjacency(n_nodes: int, edges: np.ndarray, kind: str = "symmetric",
                         self_loops: bool = True) -> sp.csr_matrix:
    """The normalised undirected adjacency of ``edges`` [E, 2] as float32 CSR, ``A`` 0/1, each link once.

    ``kind`` ``symmetric``: ``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling, GCNZ); ``dgp``: ``D^-1 (A + I)``,
    each row averaging the node and its neighbours (DGP's ``normt_spm(method='in')``). Without
    ``self_loops`` the identity is left out; isolated nodes then get all-zero rows. Kept by content
    (read-only): models rebuild the same graph's adjacency for every fit of a selection.
    """
    if kind not in ADJACENCIES:
        raise PipelineError(f"adjacency {kind!r} unknown; use one of {ADJACENCIES}")
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= n_nodes):
        raise PipelineError(f"graph edges index nodes outside 0..{n_nodes - 1}")
    rows, cols = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
    if self_loops:
        rows, cols = np.concatenate([rows, np.arange(n_nodes)]), np.concatenate([cols, np.arange(n_nodes)])
    a = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_nodes, n_nodes))
    a.sum_duplicates()
    a.data[:] = 1
    degree = np.asarray(a.sum(axis=1)).ravel()
    if kind == "dgp":
        inverse = np.zeros(n_nodes, dtype=np.float32)
        inverse[degree > 0] = 1.0 / degree[degree > 0]
        a.data *= inverse[np.repeat(np.arange(n_nodes), np.diff(a.indptr))]
        return a
    scale = np.zeros(n_nodes, dtype=np.float32)
    scale[degree > 0] = degree[degree > 0] ** -0.5
    a.data *= scale[np.repeat(np.arange(n_nodes), np.diff(a.indptr))] * scale[a.indices]
    return a


@dataclass
class Graph:
    """A class graph: nodes 0..n_classes-1 are the classes (feature-file order), then other nodes."""

    edges: np.ndarray  # [E, 2] int64 node pairs (child -> parent for WordNet), read as undirected links
    node_vectors: np.ndarray  # [V, E] input vectors of the nodes (word vectors of their names)
    n_classes: int
    node_encoder: str | None = None  # what embedded the node names (e.g. "glove"); None: given vectors

    def adjacency(self, kind: str) -> sp.csr_matrix:
        """[V, V] normalised adjacency with self-loops (:func:`normalized_adjacency`)."""
        return normalized_adjacency(len(self.node_vectors), self.edges, kind)


@dataclass
class Semantics:
    """Class-level inputs for all C classes, rows in feature-file class order."""

    vectors: np.ndarray  # [C, S] the chosen semantic vectors (attributes or a class-name embedding)
    text: dict[str, np.ndarray] = field(default_factory=dict)  # every class-name embedding, e.g. "clip" [C, E]
    graph: Graph | None = None
    attribute_vectors: np.ndarray | None = None  # [A, E] word vectors of the attribute names (attention models)
    # [C, D + 1]: the backbone's own classifier row of each class (weight, then bias), NaN where its head
    # has no output for the class; None when the feature store records no head. Models read seen rows only.
    classifiers: np.ndarray | None = None
    source: str | None = None  # what ``vectors`` are: attributes | text:<encoder>


@dataclass
class Split:
    """Cached features of some images: ``features`` [N, D], global class ``labels`` [N],
    ``extra`` features of the same images from other backbones (e.g. ``"clip"`` [N, D2]), and
    their spatial features ``grid``, streamed from the store (attention models). Multi-label
    data has ``tags`` [N, C] bool (global class indices) and labels all -1."""

    features: np.ndarray
    labels: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    grid: GridSource | None = None
    tags: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> Split:
        return Split(self.features[rows], self.labels[rows], {k: v[rows] for k, v in self.extra.items()},
                     self.grid.subset(rows) if self.grid is not None else None,
                     self.tags[rows] if self.tags is not None else None)

    def concat(self, other: Split) -> Split:
        """The images of ``self`` followed by those of ``other``."""
        grid = self.grid.concat(other.grid) if self.grid is not None and other.grid is not None else None
        tags = np.concatenate([self.tags, other.tags]) if self.tags is not None and other.tags is not None else None
        return Split(np.concatenate([self.features, other.features]), np.concatenate([self.labels, other.labels]),
                     {k: np.concatenate([v, other.extra[k]]) for k, v in self.extra.items()}, grid, tags)

    def targets(self, n_classes: int) -> np.ndarray:
        """[N, C] bool: the tags, or the one-hot labels of single-label data."""
        if self.tags is not None:
            return self.tags
        out = np.zeros((len(self), n_classes), dtype=bool)
        out[np.arange(len(self)), self.labels] = True
        return out


def epoch_bar(epochs: int, name: str) -> tqdm:
    """A progress bar over training epochs (loss and time left; cleared when done)."""
    return tqdm(range(int(epochs)), desc=name, unit="epoch", leave=False)


def typed_hparams(model: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against the type of each default (bool, whole number, number ≥ 0, text; a
    default of None takes anything): every problem in one line. A number written as YAML 1.1 reads
    ``1e-3`` (a string) is taken as the number it spells."""
    out, problems = dict(given), []
    for key, value in given.items():
        default, least = defaults[key], 1 if key == "batch_size" else 0
        if default is None:
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
            kind = f"a whole number >= {least}"
        elif isinstance(default, float):
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = out[key] = float(value)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            kind = "a number >= 0"
        else:
            ok, kind = isinstance(value, type(default)), "text"
        if not ok:
            problems.append(f"{key}: {value!r} is not {kind} (default {default!r})")
    if problems:
        raise PipelineError(f"{model}: {'; '.join(problems)}")
    return out


class ZSLModel(ABC):
    """Base class. Subclasses set ``name``, ``defaults`` (hyperparameters) and ``search_space`` (the values
    tried on the validation split), and implement fit / image_embeddings / class_embeddings."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    search_space: ClassVar[dict[str, list[Any]]] = {}
    multilabel: ClassVar[bool] = False  # trains on ``Split.tags`` (several classes per image)
    # hyperparameters read only when embedding, never by fit: selection fits once for all their values
    inference_hparams: ClassVar[tuple[str, ...]] = ()
    # fit reads the semantics of the classes outside ``seen`` as the unseen ones (MSDN's self-calibration):
    # validation fits then see only their fold's train and val classes (pipeline.train.fold_problem)
    fits_unseen_classes: ClassVar[bool] = False
    # validation folds selection averages by default (pipeline.train.validation_folds): 1 for networks
    # trained by gradient, 5 for closed forms, whose fits take milliseconds
    selection_folds: int = 1

    def __init__(self, *, device: str = "auto", **hparams: Any):
        """``hparams`` over :attr:`defaults`; ``device`` (``auto`` | ``cpu`` | ``cuda[:N]``) is where a network
        trains and runs: a setting of the run, not a hyperparameter (closed forms run on the CPU)."""
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise PipelineError(f"{self.name}: unknown hyperparameters {sorted(unknown)}; known: {sorted(self.defaults)}")
        self.hparams = {**self.defaults, **typed_hparams(self.name, self.defaults, hparams)}

    def reads_graph(self, semantics: Semantics) -> bool:
        """Whether the class embeddings of ``semantics`` propagate over its ``graph``, so that a class
        outside the graph cannot be embedded."""
        return False

    def stand_in(self) -> dict[str, Any]:
        """The hyperparameters validated in place of these during selection: the same by default. A model
        that refines a closed-form start by gradient steps validates the start (cheap enough for 5 folds)
        and runs its refinement only on the chosen setting."""
        return self.hparams

    @abstractmethod
    def fit(self, train: Split, seen: np.ndarray, semantics: Semantics, seed: int) -> dict[str, Any]:
        """Train on ``train`` (labels within the ``seen`` class indices); returns a log (losses, seconds)."""

    @abstractmethod
    def image_embeddings(self, data: Split) -> np.ndarray:
        """[N, J] (or [N, K, J]) float32 embeddings of the images of ``data``."""

    @abstractmethod
    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        """[C, J] float32 embeddings of all C classes."""

    def class_embeddings_of(self, semantics: Semantics, rows: np.ndarray) -> np.ndarray:
        """[len(rows), J] the embeddings of the classes ``rows`` (indices into the C classes): those rows of
        :meth:`class_embeddings`. A model whose class embeddings cost much (a GCN's output layer over
        ImageNet-21K's classes) computes these rows only: selection scores a few classes per fit."""
        return self.class_embeddings(semantics)[rows]

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the trained model (tensors and arrays); see :meth:`load_state`."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; returns a torch generator for data order."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


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
