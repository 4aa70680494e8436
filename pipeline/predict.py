"""Label images with any class names: a trained model, the images' features and candidate names give
each image's top-k classes with scores.

* **Images**: the rows of a feature store (``features``, optionally one ``split``), or image files
  and folders, extracted on the fly with the backbone the model was trained on (the checkpoint
  records it; a different backbone is refused).
* **Candidates**: any class names. Names among the model's classes take their semantic vectors from
  the semantics file. When the classes are WordNet synsets (wnids, or mapped to them), a name is also
  read as a WordNet noun (``golden retriever``, its most frequent sense; ``dog.n.01`` or a wnid picks
  one): a synset among the classes is that class, whatever it is called. A model whose class
  embeddings propagate over the WordNet graph (``gcn_regression``, ``joint_gcn``, and ``eszsl`` /
  ``conse`` with ``graph_steps`` > 0) embeds any other noun too: the synset and its hypernyms join the
  graph and the trained GCN runs over the extended graph (its weights do not depend on the node
  count). Models on class-name vectors embed other names as free text with the encoder they were
  trained with (``text:<encoder>``). A name that needs an attribute row, or a WordNet noun that does
  not exist, gets a one-line error saying what to supply. Each candidate's route (``class``,
  ``wordnet``, ``text:<encoder>``) comes with the predictions.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backbones import load_backbone
from pipeline.datasets.base import ImageDataset
from pipeline.datasets.folder import find_images
from pipeline.errors import PipelineError
from pipeline.extract import extract, normal_setting
from pipeline.inputs import check_semantics, read_semantics, read_split
from pipeline.models.base import Graph, Semantics, Split, ZSLModel
from pipeline.outputs import write_whole
from pipeline.scoring import search
from pipeline.semantics import wordnet as wn
from pipeline.semantics.build import SemanticsConfig, class_name_embeddings, node_vectors
from pipeline.semantics.file import SemanticsFile
from pipeline.store import FeatureStore
from pipeline.text_files import read_utf8
from pipeline.train import load_checkpoint

log = logging.getLogger(__name__)

# route -> (how one candidate was read, how a count of them reads in the summary)
_ROUTES = {"class": ("a class of the model", "of the model's classes"),
           "wordnet": ("a node added to the WordNet graph the model runs over", "WordNet nouns added to its graph")}


@dataclass(frozen=True)
class Candidate:
    """A candidate class as predict reads it: the ``name`` given, the ``label`` shown (``golden retriever
    (n02099601)`` for a WordNet synset) and its ``route``: ``class`` (one of the model's classes),
    ``wordnet`` (a synset new to the graph the model propagates over) or ``text:<encoder>`` (free text
    embedded by the model's encoder)."""

    name: str
    label: str
    route: str

    def describe(self) -> str:
        """One line: ``person: person (n00007846), a node added to the WordNet graph the model runs over``."""
        reading = f"{self.label}, " if self.label != self.name else ""
        return f"{self.name}: {reading}{_ROUTES.get(self.route, (f'free text embedded by {self.route}',))[0]}"


@dataclass(frozen=True)
class Predictions:
    """Each image's ``k`` best candidate classes, best first."""

    images: list[str]  # image paths (relative to the dataset root for a feature store)
    classes: list[str]  # the candidate classes as shown (``top`` indexes them)
    top: np.ndarray  # [N, k] int64
    scores: np.ndarray  # [N, k] float32 (γ already subtracted from seen classes when calibrated)
    truth: list[str] | None = None  # each image's class as shown, when the feature store knows it
    calibrated: bool = False
    candidates: list[Candidate] = field(default_factory=list)  # how each class was read (same order)

    @property
    def labels(self) -> list[str]:
        """Each image's best class."""
        return [self.classes[row[0]] for row in self.top]

    def accuracy(self) -> float | None:
        """Top-1 accuracy over the images whose true class is a candidate (None: none is)."""
        if self.truth is None:
            return None
        known = [(p, t) for p, t in zip(self.labels, self.truth) if t in set(self.classes)]
        return sum(p == t for p, t in known) / len(known) if known else None

    def summary(self) -> str:
        """One line: how many images, over how many candidates, and the accuracy when it is known."""
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        common = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
        acc = self.accuracy()
        routes = Counter(c.route for c in self.candidates)
        read = ", ".join(f"{n} {_ROUTES.get(route, ('', f'embedded by {route}'))[1]}" for route, n in routes.items()) \
            if set(routes) - {"class"} else ""  # said only when some are not among the model's classes
        return (f"{len(self.images)} images over {len(self.classes)} candidate classes"
                f"{f' ({read})' if read else ''}{' (seen classes calibrated)' if self.calibrated else ''}; "
                f"most predicted: {common}"
                + (f"; top-1 accuracy {acc:.3f} where the true class is a candidate" if acc is not None else ""))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image: ``image``, ``truth`` (when known), then ``class_i`` / ``score_i`` for i = 1..k."""
        out = []
        for i, image in enumerate(self.images):
            row: dict[str, Any] = {"image": image}
            if self.truth is not None:
                row["truth"] = self.truth[i]
            for j, (c, s) in enumerate(zip(self.top[i], self.scores[i]), start=1):
                row[f"class_{j}"], row[f"score_{j}"] = (self.classes[c], round(float(s), 6)) if c >= 0 else ("", "")
            out.append(row)
        return out

    def text(self, fmt: str) -> str:
        """The rows as ``csv`` or ``json``."""
        rows = self.rows()
        if fmt == "json":
            return json.dumps(rows, indent=1) + "\n"
        if fmt != "csv":
            raise PipelineError(f"format {fmt!r} unknown; use csv or json")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["image"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def write(self, path: Path) -> None:
        """Write the rows to ``path`` (``.json``, else CSV) atomically."""
        write_whole(path, self.text("json" if path.suffix == ".json" else "csv").encode(), "predictions")


_NAME_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".lst", ".list", ".names")


def read_class_names(text: str) -> list[str]:
    """Candidate names from a text file (one per line, UTF-8) or a comma-separated list. Text that looks
    like a file (a folder in it, or a list's suffix such as ``.txt``) must be a readable file: a missing
    ``unseen.txt`` is an error, never one class called "unseen.txt"."""
    path = Path(text)
    if path.is_file():
        names = read_utf8(path, "class-name list").splitlines()
    elif "," not in text and ("/" in text or path.suffix.lower() in _NAME_FILE_SUFFIXES):
        raise PipelineError(f"{text}: no such file of class names; give an existing file (one name per line) or "
                            "the names themselves, separated by commas")
    else:
        names = text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise PipelineError(f"{text!r}: no class names (give a file with one name per line, or a comma list)")
    if len(set(names)) != len(names):
        raise PipelineError(f"{text!r}: class names repeat: {sorted({n for n in names if names.count(n) > 1})[:5]}")
    return names


def predict(model_file: str | Path, *, features: str | Path | None = None, split: str | None = None,
            images: Sequence[str | Path] = (), classes: Sequence[str] | str | None = None,
            semantics: str | Path | None = None, k: int = 5, calibrate: bool = True,
            backbone: str | None = None, pretrained: str | None = None,
            image_size: int | None = None, batch_size: int | None = None, workers: int = 2,
            device: str = "auto") -> Predictions:
    """Top-``k`` ``classes`` (default: all of the model's; a list of names, or one string read as
    ``--classes`` reads it: a file of names or a comma list) of the images of a feature store or of image
    files/folders (see the module docstring). ``semantics`` defaults to the file the model was trained
    with, image files go through the backbone its features came from (both recorded in the checkpoint);
    ``semantics`` and the backbone options given override them, and must agree with them."""
    model_file = Path(model_file)
    features, images = (Path(features) if features is not None else None), [Path(i) for i in images]
    if (features is None) == (not images):
        raise PipelineError("predict: give either a feature store (--features) or image files/folders, not both")
    if k < 1:
        raise PipelineError(f"predict: k must be >= 1, got {k}")
    model, checkpoint = load_checkpoint(model_file)
    if checkpoint.get("multilabel"):
        raise PipelineError(f"{model_file}: a multi-label model; predict labels single-label models")
    semantics = Path(semantics) if semantics is not None else _trained_semantics(checkpoint, model_file)
    known = list(checkpoint["classes"])
    if isinstance(classes, str):  # a file or a comma list, as --classes reads it: never its letters
        classes = read_class_names(classes)
    sem, rows, candidates = candidate_semantics(model_file, model, checkpoint, semantics,
                                                list(classes) if classes else known)
    if features is not None:
        data, ids, truth = _store_rows(features, split)
    else:
        settings = {"backbone": backbone, "pretrained": pretrained, "image_size": image_size}
        data, ids, truth = _extracted(images, checkpoint, model_file, settings, batch_size, workers, device)
    class_emb = model.class_embeddings(sem)[rows]
    seen = np.isin(rows, checkpoint["seen"])  # however a seen class was named
    calibrated = calibrate and bool(seen.any()) and not bool(seen.all())
    bias = np.where(seen, -float(checkpoint["gamma"]), 0.0).astype(np.float32) if calibrated else None
    scores, top = search(model.image_embeddings(data), class_emb, min(k, len(candidates)), class_bias=bias)
    return Predictions(ids, [c.label for c in candidates], top.astype(np.int64), scores.astype(np.float32),
                       [shown_name(t) if t else t for t in truth] if truth is not None else None, calibrated,
                       candidates)


def _trained_semantics(checkpoint: dict[str, Any], model_file: Path) -> Path:
    """The semantics file the checkpoint was trained with, when it records one that exists."""
    recorded = checkpoint.get("files", {}).get("semantics")
    if recorded is None:
        raise PipelineError(f"{model_file} does not record its semantics file (trained by an older version): pass "
                            "it with --semantics")
    path = model_file.resolve().parent / recorded  # recorded relative to the model's folder
    if not path.is_file():
        raise PipelineError(f"{model_file} was trained with the semantics {path}, which is not there: pass that "
                            "file's new place, or one with the same vectors, with --semantics")
    return path


def shown_name(name: str) -> str:
    """A class name as predictions show it: a wnid with its lemma (``golden retriever (n02099601)``)."""
    return wn.display_name(name) if wn.is_wnid(name) else name


def candidate_semantics(model_file: Path, model: ZSLModel, checkpoint: dict[str, Any], path: Path,
                        names: list[str]) -> tuple[Semantics, np.ndarray, list[Candidate]]:
    """The model's semantics with rows appended for the candidates it does not know, each candidate's row,
    and how each was read (:class:`Candidate`; the module docstring)."""
    known = list(checkpoint["classes"])
    source = checkpoint["config"]["semantics"]
    encoder = source.partition(":")[2] if source.startswith("text:") else None
    sem = read_semantics(path, source, known, None)
    check_semantics(sem, path, checkpoint, model_file)
    with SemanticsFile(path) as f:
        built = f.config()
        graph_wnids = f.graph()["wnids"] if f.has("graph") else None
    cfg = SemanticsConfig(**{**built, "text": tuple(built.get("text", ()))})
    class_wnids = graph_wnids[:len(known)] if graph_wnids else [c if wn.is_wnid(c) else "" for c in known]
    index = {name: i for i, name in enumerate(known)}
    by_wnid = {w: i for i, w in enumerate(class_wnids) if w}
    on_graph = model.reads_graph(sem)
    seen_wnids = {class_wnids[i] for i in checkpoint["seen"]}
    preferred = (seen_wnids, set(by_wnid), set(graph_wnids or ()))  # ties among equally frequent senses

    rows: list[int] = []
    candidates: list[Candidate] = []
    added_wnids: list[str] = []  # WordNet synsets new to the graph (graph models)
    texts: list[str] = []  # free text to embed (text models)
    not_nouns: list[str] = []
    for name in names:
        synset = wn.noun_synset(name, preferred) if name not in index and (by_wnid or on_graph) else None
        wnid = wn.wnid_of(synset) if synset is not None else None
        if name in index or wnid in by_wnid:
            row = index[name] if name in index else by_wnid[wnid]
            rows.append(row)
            candidates.append(Candidate(name, shown_name(class_wnids[row] or known[row]), "class"))
        elif on_graph and wnid is not None:
            if wnid not in added_wnids:
                added_wnids.append(wnid)
            rows.append(len(known) + added_wnids.index(wnid))
            candidates.append(Candidate(name, wn.display_name(wnid), "wordnet"))
        elif on_graph:
            not_nouns.append(name)
        elif encoder is not None:
            texts.append(name)
            rows.append(len(known) + len(texts) - 1)
            candidates.append(Candidate(name, name, source))
        else:
            raise PipelineError(f"{name!r} is not among the {len(known)} classes of {model_file}, which reads "
                                f"{source}: add a row for it to an attribute table and rebuild the semantics and "
                                "model, or train on class-name vectors (train.source: text:minilm)")
    if not_nouns:
        raise PipelineError(f"{', '.join(map(repr, not_nouns))}: no WordNet noun of that name, and {model.name} in "
                            f"{model_file} embeds classes only as nodes of the WordNet graph: name a synset "
                            "(dog.n.01) or a wnid (n02084071), or use a model trained on class-name vectors without "
                            "the graph (eszsl or conse, graph_steps 0)")
    if len(set(rows)) != len(rows):
        raise PipelineError(f"the candidates name one class twice: {[c.name for c in candidates]}; list each once")
    new = added_wnids or texts  # one route or the other: graph models add synsets, text models embed text
    if new:
        assert encoder is not None
        extra, _ = class_name_embeddings(encoder, new, cfg)
        if texts:
            _check_free_text(encoder, texts, extra)
        vectors = np.vstack([sem.vectors, extra])
        graph = _with_wordnet_classes(sem.graph, graph_wnids or [], added_wnids, cfg) if added_wnids else None
        sem = replace(sem, vectors=vectors, text={encoder: vectors}, graph=graph, classifiers=None)
    return sem, np.array(rows, dtype=np.int64), candidates


def _check_free_text(encoder: str, texts: list[str], vectors: np.ndarray) -> None:
    """Names an encoder cannot meaningfully embed: an error when one gets a zero vector (a word-vector
    encoder knows no word of it), a warning when no word of it is in WordNet's dictionary (a sub-word
    encoder embeds any string, typos included)."""
    blank = [t for t, v in zip(texts, vectors) if not np.abs(v).any()]
    if blank:
        them = "it" if len(blank) == 1 else "them"
        raise PipelineError(f"{', '.join(map(repr, blank))}: {encoder} knows no word of {them} (a zero vector scores 0 "
                            "against every image): check the spelling, or use a model trained on a sub-word encoder "
                            "(text:minilm)")
    unknown = [t for t in texts if not any(wn.is_word(w) for w in re.findall(r"[^\W\d_]+", t))]
    if unknown:
        log.warning("%s: no word of %s is in WordNet's dictionary; %s embeds %s anyway, from its pieces: check the "
                    "spelling", ", ".join(map(repr, unknown)), "it" if len(unknown) == 1 else "them", encoder,
                    "it" if len(unknown) == 1 else "them")


def _with_wordnet_classes(graph: Graph | None, graph_wnids: list[str], added: list[str],
                          cfg: SemanticsConfig) -> Graph:
    """``graph`` with the synsets ``added`` as classes after its own, extended by them and their hypernyms
    (:func:`pipeline.semantics.wordnet.with_classes`); the new nodes' vectors made as the semantics stage
    made the others (:func:`~pipeline.semantics.build.node_vectors`)."""
    assert graph is not None
    extended = wn.with_classes(graph_wnids, graph.edges, graph.n_classes, added,
                               instances=cfg.graph_links == "hypernyms+instances")
    new = np.flatnonzero(extended.source < 0)
    nodes = np.zeros((len(extended.wnids), graph.node_vectors.shape[1]), np.float32)
    nodes[extended.source >= 0] = graph.node_vectors[extended.source[extended.source >= 0]]
    if len(new):
        wnids = [extended.wnids[i] for i in new]
        nodes[new] = node_vectors(cfg.graph_text, wnids, [wn.lemmas_of(wn.synset_of(w)) for w in wnids], cfg)[0]
    return Graph(extended.edges, nodes, extended.n_classes, graph.node_encoder)


def _store_rows(path: Path, split: str | None) -> tuple[Split, list[str], list[str] | None]:
    with FeatureStore(path) as store:
        if not store.complete:
            raise PipelineError(f"{path}: extraction is unfinished; rerun: zsl extract ...")
        if split is not None and split not in store.splits:
            raise PipelineError(f"{path}: no split {split!r}; it has {sorted(store.splits)}")
        rows = store.splits[split] if split is not None else np.flatnonzero(store.ok)
        data = read_split(store, split or "of all images", rows, labelled=False)
        truth = [store.classes[c] if c >= 0 else "" for c in data.labels] if (data.labels >= 0).any() else None
        ids = [store.image_ids[r] for r in rows]
    return data, ids, truth


def _image_list(images: Sequence[Path]) -> tuple[Path, list[str]]:
    """The images named (files, or folders searched as :func:`find_images` does) as a common root and
    paths relative to it."""
    files: list[Path] = []
    for item in images:
        if item.is_dir():
            files += [item / f for f in find_images(item)]
        elif item.is_file():
            files.append(item)
        else:
            raise PipelineError(f"{item}: no such image file or folder")
    if not files:
        raise PipelineError(f"no images in {', '.join(map(str, images))}")
    odd = [f for f in files if not f.is_file()]
    if odd:
        raise PipelineError(f"{odd[0]}: not a regular file (a FIFO, a device, a broken link or a link loop); remove "
                            f"it or name the images one by one{f' ({len(odd)} such files)' if len(odd) > 1 else ''}")
    resolved = [f.resolve() for f in files]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return root, [p.relative_to(root).as_posix() for p in resolved]


def _extracted(images: Sequence[Path], checkpoint: dict[str, Any], model_file: Path, backbone: dict[str, Any],
               batch_size: int | None, workers: int, device: str) -> tuple[Split, list[str], None]:
    root, ids = _image_list(images)
    trained_on = checkpoint.get("backbone")
    if not trained_on:
        raise PipelineError(f"{model_file} does not record its backbone (trained before predict existed): "
                            "extract the images first (zsl extract --dataset folder ...) and pass --features")
    given = {k: v for k, v in backbone.items() if v is not None}
    recorded = trained_on.get("options")
    if recorded is None and not {"backbone", "pretrained"} <= set(given):
        raise PipelineError(f"{model_file} does not record how its backbone was built (trained by an older "
                            "version): pass the options its features were extracted with (--backbone, --pretrained, "
                            "--image-size)")
    options = {**(recorded or {"image_size": None}), **given}
    net = load_backbone(options["backbone"], options["pretrained"], options["image_size"])
    differ = {k: (trained_on[k], net.provenance.get(k)) for k in trained_on
              if k != "options" and normal_setting(net.provenance.get(k)) != normal_setting(trained_on[k])}
    if differ:
        wanted = ", ".join(f"{k} {a!r} (here {b!r})" for k, (a, b) in differ.items())
        raise PipelineError(f"{model_file} was trained on features with {wanted}: leave the backbone options out "
                            "(the checkpoint records them) or pass those it was extracted with")
    dataset = ImageDataset("predict", root, ids, np.full(len(ids), -1), [], {})
    with tempfile.TemporaryDirectory() as tmp:
        extract(dataset, net, Path(tmp) / "features.h5", batch_size=batch_size, workers=workers, device=device,
                max_failures=0)
        with FeatureStore(Path(tmp) / "features.h5") as store:
            features = store.features(np.arange(len(ids)))
    return Split(features, np.full(len(ids), -1)), [str(root / i) for i in ids], None
