"""Load the cached inputs of training and evaluation: split features, class sets, semantics."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.grid import GridSource
from pipeline.head import Head
from pipeline.models.base import Graph, Semantics, Split
from pipeline.semantics.file import SemanticsFile
from pipeline.store import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """Everything a zero-shot experiment reads, in the feature file's class order."""

    classes: list[str]
    splits: dict[str, Split]  # trainval, train, val, test_seen, test_unseen (multi-label: trainval, test)
    semantics: Semantics
    unseen_tags: np.ndarray | None = None  # multi-label data: class indices never trained on
    # the training classes of the protocol, images or not (ImageNet's 1000); None: those of trainval
    protocol_seen: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.unseen_tags is not None

    def classes_of(self, split: str) -> np.ndarray:
        """Sorted class indices present in ``split``."""
        return np.unique(self.splits[split].labels)

    @property
    def seen(self) -> np.ndarray:
        """Sorted indices of the seen (training) classes: the store's ``seen_classes`` when the dataset
        names them, images or not (ImageNet: the 1000 ILSVRC classes, known to the models by their
        semantics and the backbone's classifier rows), else the classes of ``trainval``."""
        return self.protocol_seen if self.protocol_seen is not None else self.classes_of("trainval")


def read_split(store: FeatureStore, split: str, rows: np.ndarray, extra: dict[str, FeatureStore] | None = None,
               tags: np.ndarray | None = None, labelled: bool = True) -> Split:
    """The ``rows`` of ``store`` (named ``split`` in errors) as a Split: pooled features checked for NaN,
    ``extra`` stores' features of the same rows, the grid when stored, ``tags`` rows; ``labelled``: every
    image must have a label (single-label training and evaluation)."""
    features = store.features(rows)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        raise PipelineError(f"{store.path}: split {split} has {len(bad)} feature rows with NaN or inf (rows "
                            f"{rows[bad[:5]].tolist()}); re-extract the features")
    labels = store.labels[rows]
    if labelled and tags is None and (labels < 0).any():
        raise PipelineError(f"{store.path}: a split holds images without a label (-1)")
    grid = GridSource(store.path, rows) if store.has_grid else None
    return Split(features, labels, {name: other.features(rows) for name, other in (extra or {}).items()}, grid,
                 tags[rows] if tags is not None else None)


def read_semantics(path: Path, source: str, classes: list[str], head: Head | None) -> Semantics:
    """The ``source`` semantics (attributes | text:<encoder>) of ``classes`` (checked against the file's) and
    everything else the file holds; ``head`` gives the classifier rows (None: none)."""
    with SemanticsFile(path) as sem:
        if sem.classes != classes:
            raise PipelineError(f"{path}: its {len(sem.classes)} classes differ from the feature file's "
                                f"{len(classes)} (or their order); rebuild it: python cli.py semantics ...")
        if source == "attributes":
            vectors = sem.attributes()[0]
        elif source.startswith("text:"):
            vectors = sem.text(source.partition(":")[2])
        else:
            raise PipelineError(f"semantic source {source!r} unknown; use attributes or text:<encoder>")
        text = {name: sem.text(name) for name in sem.text_encoders}
        attribute_vectors = sem.attribute_text() if sem.has("attribute_text") else None
        graph = None
        if sem.has("graph"):  # else graph models fall back to a class k-NN graph
            g = sem.graph()
            graph = Graph(g["edges"], g["node_vectors"], g["n_classes"], g["node_text"])
    if not np.isfinite(vectors).all():
        raise PipelineError(f"{path}: {source} holds NaN or inf")
    if attribute_vectors is not None and not np.isfinite(attribute_vectors).all():
        raise PipelineError(f"{path}: attribute_text (the attribute-name vectors) holds NaN or inf; rebuild it")
    return Semantics(vectors, text, graph, attribute_vectors, _classifiers(head, classes), source)


def semantics_digest(semantics: Semantics) -> str:
    """SHA-256 of what a model reads of ``semantics``: the class vectors, the attribute-name vectors and the
    graph (edges, node vectors). A checkpoint keeps it, so that evaluate and predict refuse other semantics."""
    digest = hashlib.sha256()
    graph = semantics.graph
    for part in (semantics.vectors, semantics.attribute_vectors, *((graph.edges, graph.node_vectors) if graph else ())):
        array = np.ascontiguousarray(part if part is not None else np.empty(0, np.float32))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array)
    return digest.hexdigest()


def check_semantics(semantics: Semantics, path: Path, checkpoint: dict, model_file: Path) -> None:
    """Refuse ``semantics`` (read from ``path``) when they are not those the model of ``model_file`` was
    trained with (its checkpoint's ``semantics_digest``; checkpoints without one pass)."""
    wanted = checkpoint.get("semantics_digest")
    if wanted is not None and semantics_digest(semantics) != wanted:
        trained = checkpoint.get("files", {}).get("semantics", "another file")
        raise PipelineError(f"{path}: its {semantics.source} semantics are not those {model_file} was trained with "
                            f"({trained}): pass that file (--semantics), or retrain on this one")


def _classifiers(head: Head | None, classes: list[str]) -> np.ndarray | None:
    """[C, D + 1] the head's (weight, bias) row of each class, NaN rows where it has none."""
    if head is None:
        return None
    rows = head.rows_of(classes)
    out = np.full((len(classes), head.weight.shape[1] + 1), np.nan, dtype=np.float32)
    out[rows >= 0] = np.hstack([head.weight, head.bias[:, None]])[rows[rows >= 0]]
    return out


def load_inputs(features: Path, semantics: Path, source: str = "attributes",
                extra: dict[str, Path] | None = None) -> Inputs:
    """Pooled features of every split, the classes and their semantics (``source``: attributes |
    text:<encoder>); ``extra`` names feature files of the same images from other backbones."""
    with FeatureStore(features) as store:
        if not store.complete:
            raise PipelineError(f"{features}: extraction is unfinished; rerun: python cli.py extract ...")
        others = {name: FeatureStore(path) for name, path in (extra or {}).items()}
        try:
            for name, other in others.items():
                if other.image_ids != store.image_ids:
                    raise PipelineError(f"{other.path}: its images differ from {features}'s; extract the {name} "
                                        "features from the same dataset")
            tags = store.tags
            splits = {name: read_split(store, name, rows, others, tags) for name, rows in store.splits.items()}
        finally:
            for other in others.values():
                other.close()
        classes, unseen_tags, head, seen = store.classes, store.unseen_tags, store.head, store.seen_classes
        if seen is None and store.provenance.get("dataset") == "imagenet":
            log.warning("%s: an ImageNet store written before seen_classes existed: only the training classes "
                        "with images are seen; extract again with --overwrite to have every train wnid of the "
                        "split file seen (GCNZ / DGP)", features)
    needed = {"trainval", "test"} if unseen_tags is not None else {"trainval", "test_seen", "test_unseen"}
    if needed - set(splits):
        raise PipelineError(f"{features}: no {sorted(needed - set(splits))} split; zero-shot training needs "
                            + ("the trainval / test splits" if unseen_tags is not None else "the GBU-style splits"))
    empty = sorted(name for name in needed - {"test_seen"} if len(splits[name]) == 0)
    if empty:
        raise PipelineError(f"{features}: the {', '.join(empty)} split is empty (every image failed, or the split "
                            "file names no class with images); check the dataset and its split file")
    return Inputs(classes, splits, read_semantics(semantics, source, classes, head), unseen_tags, seen)
