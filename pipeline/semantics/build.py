"""Build the semantics file: every class-level semantic vector our models use, in one HDF5.

Schema (classes in the feature store's order, C classes, A attributes, V graph nodes)::

    classes                         [C]      utf-8   class names, as in the feature file
    class_texts                     [C]      utf-8   cleaned names the text encoders read
    attributes/values               [C, A]   float32 class-attribute matrix
    attributes/names                [A]      utf-8
    text/<encoder>/values           [C, E]   float32 class-name embeddings (clip, minilm, glove, vectors)
    attribute_text/values           [A, E]   float32 attribute-name embeddings
    graph/wnids, graph/names        [V]      utf-8   classes first (C of them), then ancestors
    graph/edges                     [Eg, 2]  int64   child -> parent hypernym edges
    graph/ancestor_edges            [Ea, 2]  int64   node -> every ancestor (DGP's dense graph) ...
    graph/ancestor_distance         [Ea]     int64   ... with the hop distance
    graph/node_vectors              [V, E]   float32 text embeddings of the node names

Each group records in its attributes what made it (source file, normalisation, encoder, model,
templates, out-of-vocabulary words) and ``inputs``, a digest of those inputs: a rebuild copies
every group whose inputs are unchanged and computes only the rest.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.choices import CLIP_DEFAULT, clip_architecture
from pipeline.errors import PipelineError
from pipeline.norms import l2_normalize
from pipeline.outputs import write_whole
from pipeline.semantics import attributes as attr
from pipeline.semantics import text
from pipeline.semantics import wordnet as wn
from pipeline.semantics.vector_files import class_name_vectors
from pipeline.store import FeatureStore
from pipeline.text_files import read_utf8

log = logging.getLogger(__name__)
# text encoders: ENCODERS below, glove:PATH (a GloVe-format file), and for class names vectors:PATH
# (given class-name vectors, .npy/.pickle, stored as text/vectors)
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class SemanticsConfig:
    """What to build; see README "Class semantics" for each field."""

    attributes: str | None = None  # synthetic | path to .mat/.csv/.tsv | None
    attribute_key: str = "att"  # att | original_att (xlsa17 .mat)
    attribute_names: str | None = None  # CUB_attributes.txt, AWA2_predicates.txt, SUN_attributes.mat
    normalisation: str = "l2"  # l2 | none
    text: tuple[str, ...] = ()  # encoders over class names: clip, minilm, glove, glove:PATH, vectors:PATH
    clip_model: str | None = None  # open_clip architecture of text clip; None: the store's CLIP (clip_of_store)
    clip_pretrained: str | None = None  # its weights: tag, local file or none; None: as clip_model
    templates: str = "imagenet7"  # simple | imagenet7 | imagenet80
    attribute_vectors: str | None = None  # pickled [A, E] file, or a text encoder over attribute names
    graph: str = "none"  # none | wordnet
    wnids: str | None = None  # JSON {class: wnid} (or DGP's awa2-split.json); None: classes are wnids
    graph_text: str = "glove"  # text encoder of graph node vectors; minilm+glove: each's, unit norm, concatenated
    glosses: bool = False  # sentence encoders (GLOSS_ENCODERS) also read each WordNet class's and node's definition
    graph_links: str = "hypernyms+instances"  # WordNet links followed upward; DGP: hypernyms
    data_root: str | None = None  # dataset root (attributes=synthetic)
    vector_names: str | None = None  # names of the rows of vectors:PATH (.txt/.pickle/.json); None: class order


def _file_digest(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _clip(texts: list[str], cfg: SemanticsConfig, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    return (text.clip_text_embeddings(texts, cfg.clip_model, cfg.clip_pretrained, cfg.templates),
            text.clip_text_provenance(cfg.clip_model, cfg.clip_pretrained, cfg.templates))


def _minilm(texts: list[str], cfg: SemanticsConfig, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    return text.minilm_embeddings(texts), text.minilm_provenance()


def _glove(texts: list[str], cfg: SemanticsConfig, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    words = text.WordVectors.load(path or text.GLOVE_NAME)
    vectors, oov = text.word_vector_embeddings(texts, words)
    return vectors, {**words.provenance, "oov": oov}


# the encoders that read a synset's definition with its names under ``glosses`` (sentences; word vectors would
# average a definition's every word)
GLOSS_ENCODERS = ("minilm", "clip")
# name -> encode(texts, cfg, path): ``path`` is what follows ``name:`` (glove:PATH; "" otherwise)
ENCODERS: dict[str, Callable[[list[str], SemanticsConfig, str], tuple[np.ndarray, dict[str, Any]]]] = {
    "clip": _clip, "minilm": _minilm, "glove": _glove,
}


def encode_texts(encoder: str, texts: list[str], cfg: SemanticsConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings [N, E] of ``texts`` with ``encoder`` (one of :data:`ENCODERS`, or ``glove:PATH``) and its
    provenance (incl. OOV words)."""
    name, _, path = encoder.partition(":")
    if name == "vectors":
        raise PipelineError(f"{encoder}: given vectors exist for class names only; use it in text, "
                            f"not for other names (use one of {', '.join(ENCODERS)} or glove:PATH there)")
    if name not in ENCODERS or (path and name != "glove"):
        raise PipelineError(f"unknown text encoder {encoder!r}; use one of {', '.join(ENCODERS)}, glove:PATH or "
                            "vectors:PATH")
    return ENCODERS[name](texts, cfg, path)


def class_name_embeddings(encoder: str, classes: list[str], cfg: SemanticsConfig,
                          wnids: list[str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings [C, E] of class names (wnids read as their first lemma, with the other lemmas when a
    word-vector encoder knows no word of it) and their provenance. With ``cfg.glosses``, a
    :data:`GLOSS_ENCODERS` row of a class with a wnid (``wnids``: each class's, "" for none; default: the
    classes that are wnids) is the unit-norm mean of its name's and its gloss's (:func:`wordnet.gloss_text`)."""
    vectors, meta = encode_texts(encoder, _class_texts(classes), cfg)
    vectors, meta = _other_lemmas_for_unknown_names(encoder, classes, vectors, meta, cfg)
    if not (cfg.glosses and encoder in GLOSS_ENCODERS):
        return vectors, meta
    wnids = [c if wn.is_wnid(c) else "" for c in classes] if wnids is None else wnids
    rows = [i for i, w in enumerate(wnids) if w]
    if rows:
        glosses, _ = encode_texts(encoder, [wn.gloss_text(wnids[i]) for i in rows], cfg)
        vectors = vectors.copy()
        vectors[rows] = l2_normalize(l2_normalize(vectors[rows]) + l2_normalize(glosses))
    return vectors, {**meta, "glosses": len(rows)}


def graph_encoders(encoders: str) -> list[str]:
    """The encoders of a ``graph_text`` (``minilm``, ``minilm+glove``), each named once and joined by ``+``."""
    names = encoders.split("+")
    if any(c in name.partition(":")[0] for name in names for c in " ,;"):
        raise PipelineError(f"graph_text {encoders!r}: join several encoders with '+' (minilm+glove)")
    if len(set(names)) < len(names):
        raise PipelineError(f"graph_text {encoders!r} names an encoder twice; name each once (minilm+glove)")
    return names


def node_vectors(encoders: str, wnids: list[str], lemmas: list[list[str]],
                 cfg: SemanticsConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Graph node vectors [V, E] of the synsets ``wnids`` (their ``lemmas``) and their provenance: per encoder
    of ``encoders`` (``minilm`` or several, ``minilm+glove``) the mean of the lemmas' embeddings
    (:func:`lemma_vectors`), with ``cfg.glosses`` and a :data:`GLOSS_ENCODERS` one averaged with the gloss's
    embedding; several encoders' vectors, each unit norm, are concatenated."""
    names = graph_encoders(encoders)
    parts, metas = [], {}
    for encoder in names:
        vectors, metas[encoder] = lemma_vectors(encoder, lemmas, cfg)
        if cfg.glosses and encoder in GLOSS_ENCODERS:
            glosses, _ = encode_texts(encoder, [wn.gloss_text(w) for w in wnids], cfg)
            vectors = (vectors + glosses) / 2
        parts.append(vectors)
    if len(parts) == 1:
        return parts[0], metas[encoders]
    return np.concatenate([l2_normalize(v) for v in parts], axis=1), metas


def _encoder_inputs(encoder: str, cfg: SemanticsConfig) -> list[Any]:
    if encoder == "clip":
        return [encoder, cfg.clip_model, cfg.clip_pretrained, _file_digest(cfg.clip_pretrained), cfg.templates]
    if encoder.startswith("vectors:"):
        return [encoder, _file_digest(encoder.partition(":")[2]), cfg.vector_names, _file_digest(cfg.vector_names)]
    return [encoder, _file_digest(encoder.partition(":")[2] or None)]


def _class_texts(classes: list[str]) -> list[str]:
    return [wn.class_lemma(c) if wn.is_wnid(c) else text.clean_class_name(c) for c in classes]


def _other_lemmas_for_unknown_names(encoder: str, classes: list[str], vectors: np.ndarray, meta: dict[str, Any],
                                    cfg: SemanticsConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Classes that are wnids and whose name got a zero vector (no word known to a word-vector encoder)
    take the mean over all their WordNet lemmas instead (:func:`lemma_vectors`); recorded as
    ``lemma_fallback`` (the classes) in the provenance."""
    unknown = [i for i, c in enumerate(classes) if wn.is_wnid(c) and not np.abs(vectors[i]).any()]
    if not unknown:
        return vectors, meta
    lemmas = [wn.lemmas_of(wn.synset_of(classes[i])) for i in unknown]
    vectors = vectors.copy()
    vectors[unknown] = lemma_vectors(encoder, lemmas, cfg)[0]
    still = sum(not np.abs(vectors[i]).any() for i in unknown)
    log.info("%s: %d class names without a known word took their other WordNet lemmas; %d still have none",
             encoder, len(unknown), still)
    return vectors, {**meta, "lemma_fallback": [classes[i] for i in unknown], "without_vector": int(still)}


def read_wnid_map(path: Path, classes: list[str]) -> list[str]:
    """The wnid of each class from a JSON ``{class: wnid}`` or DGP-style ``{train, test, train_names, test_names}``."""
    try:
        data = json.loads(read_utf8(path, "class-to-wnid JSON"))
    except ValueError as e:
        raise PipelineError(f"{path}: cannot read class-to-wnid JSON ({e})") from e
    if "train_names" in data:
        data = dict(zip(data["train_names"] + data["test_names"], data["train"] + data["test"]))
    missing = [c for c in classes if c not in data]
    if missing:
        raise PipelineError(f"{path}: no wnid for {len(missing)} classes (first: {missing[0]!r})")
    return [data[c] for c in classes]


class _Builder:
    """Writes one group at a time into the new file, copying it from the old one when unchanged."""

    def __init__(self, new: h5py.File, old: h5py.File | None):
        self.new, self.old = new, old
        self.built: list[str] = []

    def group(self, name: str, inputs: list[Any], make: Callable[[h5py.Group], None]) -> None:
        digest = _digest(name, inputs)
        if self.old is not None and name in self.old and self.old[name].attrs.get("inputs") == digest:
            self.old.copy(self.old[name], self.new, name=name)
            return
        log.info("semantics: building %s", name)
        # built in a scratch file and copied over, as a reused group is: the same content then gives the
        # same file bytes whether built or reused (DVC sees no change on a fresh `dvc repro`)
        with h5py.File(io.BytesIO(), "w") as scratch:
            make(scratch.create_group(name))
            scratch[name].attrs["inputs"] = digest
            scratch.copy(scratch[name], self.new, name=name)
        self.built.append(name)


def _attrs(group: h5py.Group | h5py.Dataset, meta: dict[str, Any]) -> None:
    for key, value in meta.items():
        group.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else ("" if value is None else value)


def clip_of_store(cfg: SemanticsConfig, provenance: dict[str, Any]) -> SemanticsConfig:
    """``cfg`` with the CLIP text encoder it leaves unset (None) taken from the feature store's backbone when
    that is a CLIP image tower (its architecture and weights: text and image embeddings then share one
    space), else open_clip's ViT-B-32 with OpenAI's weights."""
    store_model = clip_architecture(str(provenance.get("backbone", "")))  # None: not a CLIP backbone
    model = cfg.clip_model or store_model or CLIP_DEFAULT
    weights = provenance.get("options", {}).get("pretrained", provenance.get("pretrained"))
    return replace(cfg, clip_model=model, clip_pretrained=cfg.clip_pretrained or (weights if model == store_model
                                                                                    else "openai"))


def build_semantics(features: Path, output: Path, cfg: SemanticsConfig) -> list[str]:
    """Write the semantics file for the classes of feature file ``features``; returns groups (re)built."""
    with FeatureStore(features) as store:
        classes = store.classes
        cfg = clip_of_store(cfg, store.provenance)
    if cfg.graph == "wordnet":
        graph_encoders(cfg.graph_text)  # before the class names are embedded
    # each class's wnid from the wnids map, read once and before any embedding (None: no map)
    mapped = read_wnid_map(Path(cfg.wnids), classes) if cfg.wnids and (cfg.glosses or cfg.graph == "wordnet") else None
    old = _previous(output)
    image = io.BytesIO()  # built in memory (a few MB), written in one piece: a full disk is one OSError
    try:
        with h5py.File(image, "w") as new:
            new.create_dataset("classes", data=classes, dtype=_STR)
            texts = _class_texts(classes)
            new.create_dataset("class_texts", data=texts, dtype=_STR)
            b = _Builder(new, old)
            class_wnids = _gloss_wnids(classes, cfg, mapped)
            attributes = None
            if cfg.attributes:
                raw = attr.read_attributes(cfg.attributes, cfg.attribute_key,
                                           Path(cfg.attribute_names) if cfg.attribute_names else None,
                                           Path(cfg.data_root) if cfg.data_root else None)
                attributes = attr.normalise(attr.align(raw, classes), cfg.normalisation)

                def make_attributes(g: h5py.Group) -> None:
                    g["values"] = attributes.values
                    g.create_dataset("names", data=attributes.names, dtype=_STR)
                    _attrs(g, {"source": attributes.source, "normalisation": attributes.normalisation})

                b.group("attributes", [classes, attributes.source, _digest(attributes.values.tolist(), attributes.names),
                                       attributes.normalisation], make_attributes)
            for encoder in cfg.text:
                def make_text(g: h5py.Group, encoder: str = encoder) -> None:
                    if encoder.startswith("vectors:"):
                        vectors, meta = _class_vectors(encoder, classes, cfg)
                    else:
                        vectors, meta = class_name_embeddings(encoder, classes, cfg, class_wnids)
                    g["values"] = vectors
                    _attrs(g, meta)

                inputs = [texts, _encoder_inputs(encoder, cfg), "lemma fallback"] + (
                    [classes] if encoder.startswith("vectors:") else []) + (
                    ["glosses", class_wnids] if cfg.glosses and encoder in GLOSS_ENCODERS else [])
                b.group(f"text/{encoder.partition(':')[0]}", inputs, make_text)
            if cfg.attribute_vectors:
                if attributes is None:
                    raise PipelineError("attribute_vectors needs attributes (their names); set attributes")
                _attribute_text(b, attributes.names, cfg)
            if cfg.graph == "wordnet":
                _graph(b, classes, cfg, mapped)
            elif cfg.graph != "none":
                raise PipelineError(f"graph {cfg.graph!r} unknown; use wordnet or none")
            new.attrs["config"] = json.dumps(asdict(cfg))
            new.attrs["features"] = str(features)
            built = b.built
    finally:
        if old is not None:
            old.close()
    write_whole(output, image.getvalue(), "semantics")
    return built


def _gloss_wnids(classes: list[str], cfg: SemanticsConfig, mapped: list[str] | None) -> list[str] | None:
    """With ``cfg.glosses``: each class's wnid ("" for none; ``mapped``: the wnids map's), checked to be of use:
    some class has one and some encoder reads glosses. None without glosses."""
    if not cfg.glosses:
        return None
    encoders = [*cfg.text, *(graph_encoders(cfg.graph_text) if cfg.graph == "wordnet" else [])]
    if not any(e in GLOSS_ENCODERS for e in encoders):
        raise PipelineError(f"glosses: none of the encoders {encoders} reads a definition; add a sentence encoder "
                            f"({' or '.join(GLOSS_ENCODERS)}) to text or graph_text, or drop glosses")
    wnids = mapped if mapped is not None else [c if wn.is_wnid(c) else "" for c in classes]
    if not any(wnids):
        raise PipelineError("glosses: no class is a WordNet id (n02084071), so none has a definition; give a "
                            "{class: wnid} map (wnids) or drop glosses")
    return wnids


def _previous(output: Path) -> h5py.File | None:
    """The semantics file already at ``output``, whose unchanged groups are reused; None when there is
    none or it is unreadable (then everything is rebuilt)."""
    if not output.is_file():
        return None
    try:
        return h5py.File(output, "r")
    except OSError as e:
        log.warning("%s is not a readable semantics file (%s); building every group anew", output, e)
        return None


def _class_vectors(encoder: str, classes: list[str], cfg: SemanticsConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """``vectors:PATH``: the given class-name vectors [C, E], rows matched to ``classes``."""
    path = encoder.partition(":")[2]
    if not path:
        raise PipelineError("vectors: needs a file, as vectors:PATH (.npy, .pickle or .pkl)")
    return class_name_vectors(Path(path), classes, Path(cfg.vector_names) if cfg.vector_names else None)


def _attribute_text(b: _Builder, names: list[str], cfg: SemanticsConfig) -> None:
    source = cfg.attribute_vectors
    assert source is not None
    from_file = is_file_name(source)
    log.info("attribute_vectors %r: taken as %s", source, "a pickled [A, E] file" if from_file else "a text encoder")

    def make(g: h5py.Group) -> None:
        if from_file:
            g["values"] = attr.read_attribute_vectors(Path(source), len(names))
            _attrs(g, {"source": source})
        else:
            vectors, meta = encode_texts(source, [text.clean_class_name(n) for n in names], cfg)
            g["values"] = vectors
            _attrs(g, meta)

    inputs = [names, source, _file_digest(source) if from_file else None] + (
        [] if from_file else _encoder_inputs(source, cfg))
    b.group("attribute_text", inputs, make)


def is_file_name(source: str) -> bool:
    """Whether an ``attribute_vectors`` setting names a file (a path with a folder or a ``.pkl`` /
    ``.pickle`` suffix) rather than an encoder (``minilm``, ``glove``, ``glove:PATH``, ``clip``): a file
    that happens to be called ``minilm`` in the working folder is never read."""
    if ":" in source.split("/")[0]:  # glove:PATH and friends
        return False
    return "/" in source or Path(source).suffix.lower() in (".pkl", ".pickle")


def _graph(b: _Builder, classes: list[str], cfg: SemanticsConfig, mapped: list[str] | None) -> None:
    if cfg.graph_links not in ("hypernyms+instances", "hypernyms"):
        raise PipelineError(f"graph_links {cfg.graph_links!r} unknown; use hypernyms+instances or hypernyms (DGP)")
    wnids = classes if mapped is None else mapped

    def make(g: h5py.Group) -> None:
        graph = wn.induced_graph(wnids, instances=cfg.graph_links == "hypernyms+instances")
        g.create_dataset("wnids", data=graph.wnids, dtype=_STR)
        g.create_dataset("names", data=graph.names, dtype=_STR)
        g["edges"] = graph.edges
        edges, distance = wn.ancestor_edges(graph)
        g["ancestor_edges"], g["ancestor_distance"] = edges, distance
        g["node_vectors"], meta = node_vectors(cfg.graph_text, graph.wnids, graph.lemmas, cfg)
        made = "mean over lemmas" + (", averaged with the gloss" if cfg.glosses else "") + (
            "; each encoder's unit norm, concatenated" if "+" in cfg.graph_text else "")
        _attrs(g, {"n_classes": graph.n_classes, "node_text": cfg.graph_text, "node_vectors": made,
                   "links": cfg.graph_links, "node_encoder": meta})

    encoders = [_encoder_inputs(e, cfg) for e in graph_encoders(cfg.graph_text)]
    b.group("graph", [wnids, encoders[0] if len(encoders) == 1 else encoders, "lemmas", cfg.graph_links]
            + (["glosses"] if cfg.glosses else []), make)


def lemma_vectors(encoder: str, lemmas: list[list[str]], cfg: SemanticsConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Each node's vector [V, E]: the mean of its lemmas' embeddings, lemmas no word of which the
    encoder knows (all-zero embeddings) left out, as DGP builds its GloVe node vectors; a node with no
    known lemma stays zero (counted in the provenance as ``nodes_without_vector``)."""
    flat = [lemma for node in lemmas for lemma in node]
    vectors, meta = encode_texts(encoder, flat, cfg)
    known = np.abs(vectors).sum(axis=1) > 0
    owner = np.repeat(np.arange(len(lemmas)), [len(node) for node in lemmas])
    sums = np.zeros((len(lemmas), vectors.shape[1]), np.float64)
    np.add.at(sums, owner[known], vectors[known])
    counts = np.bincount(owner[known], minlength=len(lemmas))
    out = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return out, {**meta, "nodes_without_vector": int((counts == 0).sum())}
