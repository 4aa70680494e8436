"""WordNet 3.0 offline, wnids, and the class hypernym graph that GCN zero-shot models run over (GCNZ, DGP)."""
from __future__ import annotations

import functools
import os
import re
import shutil
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # nltk is imported when WordNet is first read (1 s of start-up otherwise)
    from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

DEBIAN_WORDNET = Path("/usr/share/wordnet")
ENTITY = "n00001740"  # entity.n.01, the root of the noun hierarchy
INSTALL = "apt-get install -y wordnet-base wordnet-sense-index (Debian/Ubuntu) or python -m nltk.downloader wordnet"

# lexnames(5WN) of WordNet 3.0: lexicographer file i is _LEXNAMES[i]; the dict files name no others.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_POS = ("noun", "verb", "adj", "adv")
_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in _POS) + tuple(f"{pos}.exc" for pos in _POS)
_FILES = (*_REQUIRED, "index.sense", "cntlist.rev")  # the last two: lemma keys and counts, when installed
_WNID = re.compile(r"n\d{8}")


def lexnames_text() -> str:
    """The ``lexnames`` file NLTK needs and Debian ships only as the lexnames(5WN) man page."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


@functools.cache
def wordnet(data_dir: Path | None = None, source: Path = DEBIAN_WORDNET) -> WordNetCorpusReader:
    """WordNet 3.0 as an NLTK reader, opened once per arguments.

    The Debian dict files in ``source`` are copied, with a generated ``lexnames``, into the NLTK data folder
    ``data_dir`` (default ``~/.cache/zsl-pipeline/nltk_data``) as ``corpora/wordnet``, which joins
    ``nltk.data.path``; without them, NLTK's own downloaded ``corpora/wordnet`` is read. The other functions
    here use ``wordnet()`` with its defaults.
    """
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _EnglishWordNet(WordNetCorpusReader):
        """NLTK's reader without its map of other WordNet versions onto this one, which only the Open
        Multilingual Wordnet reads (not used here) and which took 4 of the 7 s of opening WordNet."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    if all((source / name).is_file() for name in _REQUIRED):
        if data_dir is None:
            data_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zsl-pipeline" / "nltk_data"
        root = str(_layout(source, data_dir))
    else:
        try:
            root = nltk.data.find("corpora/wordnet")
        except LookupError:
            raise PipelineError(f"WordNet 3.0 is in neither {source} nor NLTK's data; install it: {INSTALL}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The multilingual functions")  # no Open Multilingual Wordnet: not needed
        return _EnglishWordNet(root, None)


def _layout(source: Path, data_dir: Path) -> Path:
    """Copy ``source``'s dict files and ``lexnames`` into ``data_dir/corpora/wordnet`` and return that folder.

    NLTK 3.10+ reads only private regular files (3.10.3+: no symlinks) below an ``nltk.data.path`` entry, hence copies
    (36 MB), mode 0644, swapped in atomically; files already copied (same size and mtime) are kept.
    """
    root = data_dir / "corpora" / "wordnet"

    def put(target: Path, write: Callable[[Path], object]) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            tmp.chmod(0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    try:
        for folder in (data_dir, root.parent, root):
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name in _FILES:
            src, dst = source / name, root / name
            if src.is_file() and not (dst.is_file() and _same_file(src.stat(), dst.stat())):
                put(dst, lambda tmp, src=src: shutil.copy2(src, tmp))
        put(root / "lexnames", lambda tmp: tmp.write_text(lexnames_text()))
    except OSError as err:
        raise PipelineError(
            f"cannot lay out WordNet in {root} ({err.strerror}); set XDG_CACHE_HOME or pass data_dir= a writable folder"
        ) from None
    import nltk.data

    if str(data_dir) not in nltk.data.path:
        nltk.data.path.append(str(data_dir))
    return root


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def is_wnid(name: str) -> bool:
    """Whether ``name`` looks like an ImageNet wnid (``n`` + 8 digits)."""
    return _WNID.fullmatch(name) is not None


def synset_of(wnid: str) -> Synset:
    """The noun synset of an ImageNet-style wnid (``n`` + 8-digit ``data.noun`` offset)."""
    if is_wnid(wnid):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "No WordNet synset found")  # NLTK then returns None
            synset = wordnet().synset_from_pos_and_offset("n", int(wnid[1:]))
        if synset is not None:
            return synset
    raise PipelineError(f"wnid {wnid!r} is not a WordNet 3.0 noun synset; a wnid is n + 8-digit offset, e.g. n02391049")


_SYNSET_NAME = re.compile(r"[^\s.]+(?:\.[^\s.]+)*\.n\.\d+")  # dog.n.01, st._bernard.n.01


def noun_synset(name: str, preferred: Sequence[Collection[str]] = ()) -> Synset | None:
    """The noun synset a class name means, or None when WordNet has no such noun: a wnid
    (``n02084071``), a synset name (``dog.n.01``), or a noun (``golden retriever``, ``Red fox``), read as
    its most frequent sense by WordNet's sense counts. Among senses counted equally often (``red fox``:
    a plant, a New World and an Old World fox, each seen 0 times) a lemma spelt as typed wins ("crane"
    before the writer "Crane"), then the first of the ``preferred`` wnid sets that holds one (e.g. a
    model's seen classes, its classes, its graph's nodes), then the sense nearest the last of them (whose
    deepest ancestor there is deepest: the foxes before the plant for a graph of animals), then WordNet's
    order; ``dog.n.03`` or a wnid names any other."""
    name = name.strip()
    if is_wnid(name):
        try:
            return synset_of(name)
        except PipelineError:
            return None
    if _SYNSET_NAME.fullmatch(name):
        from nltk.corpus.reader.wordnet import WordNetError

        try:
            return wordnet().synset(name)
        except WordNetError:
            return None
    typed = "_".join(name.split())
    lemma = typed.lower()
    senses = wordnet().synsets(lemma, pos="n")

    def rank(synset: Synset) -> tuple[int, bool, int, int]:
        names = [item.name() for item in synset.lemmas()]
        count = sum(item.count() for item in synset.lemmas() if item.name().lower() == lemma)
        wnid = wnid_of(synset)
        group = next((i for i, group in enumerate(preferred) if wnid in group), len(preferred))
        # the nearer a sense to the preferred synsets (the depth of its deepest ancestor among them), the better
        ancestors = [synset, *synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())]
        near = max((a.min_depth() for a in ancestors if preferred and wnid_of(a) in preferred[-1]), default=-1)
        return -count, typed not in names, group, -near  # "crane" the bird or machine before "Crane" the writer

    return min(senses, key=rank) if senses else None  # min keeps WordNet's order among equals


def display_name(wnid: str) -> str:
    """``golden retriever (n02099601)``: a wnid with its first lemma, for people to read."""
    return f"{class_lemma(wnid)} ({wnid})"


def is_word(word: str) -> bool:
    """Whether ``word`` (any case, inflected or not) is a WordNet lemma of any part of speech."""
    return bool(wordnet().synsets(word.lower()))


def wnid_of(synset: Synset) -> str:
    """The wnid of ``synset``: its part of speech and 8-digit offset."""
    return f"{synset.pos()}{synset.offset():08d}"


def _name(synset: Synset) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


def lemmas_of(synset: Synset) -> list[str]:
    """Every lemma of ``synset``, underscores as spaces (``n02510455`` -> giant panda, panda, ...)."""
    return [lemma.name().replace("_", " ") for lemma in synset.lemmas()]


def gloss_text(wnid: str) -> str:
    """A synset's names and its WordNet definition, ``names: definition``
    (``n02084071`` -> ``dog, domestic dog, Canis familiaris: a member of the genus Canis ...``)."""
    synset = synset_of(wnid)
    return f"{', '.join(lemmas_of(synset))}: {synset.definition()}"


def class_lemma(wnid: str) -> str:
    """A readable class name: the synset's first lemma with spaces (``n02391049`` -> ``zebra``)."""
    return _name(synset_of(wnid))


@dataclass
class KnowledgeGraph:
    """A hypernym graph: the first ``n_classes`` nodes are the classes, in the order given, then their ancestors."""

    wnids: list[str]
    names: list[str]  # first lemma of each node, underscores as spaces
    lemmas: list[list[str]]  # every lemma of each node, underscores as spaces (DGP's node vector input)
    edges: np.ndarray  # [E, 2] int64 node indices (child, parent), hypernym and instance-hypernym links, each once
    n_classes: int


def induced_graph(wnids: list[str], instances: bool = True) -> KnowledgeGraph:
    """The classes ``wnids`` and all their WordNet ancestors, linked child -> parent (the GCNZ / DGP graph).

    Ancestors follow breadth-first from the classes, each node's parents in offset order, through
    hypernym links and, with ``instances``, instance-hypernym links (DGP follows hypernyms only).
    """
    seen: set[str] = set()
    for wnid in wnids:
        if wnid in seen:
            raise PipelineError(f"wnid {wnid} is listed twice among the classes; list each class once")
        seen.add(wnid)
    graph = with_classes([], np.empty((0, 2), np.int64), 0, list(wnids), instances)
    nodes = [synset_of(w) for w in graph.wnids]
    return KnowledgeGraph(wnids=graph.wnids, names=[_name(s) for s in nodes], lemmas=[lemmas_of(s) for s in nodes],
                          edges=graph.edges, n_classes=graph.n_classes)


@dataclass
class ExtendedGraph:
    """An induced graph with classes added: ``wnids`` (the classes first, the old ones then the added ones,
    then every other node), child -> parent ``edges``, ``n_classes``, and ``source``, each node's index in
    the graph it extends (-1: a node new to it, its vector still to be made)."""

    wnids: list[str]
    edges: np.ndarray
    n_classes: int
    source: np.ndarray


def with_classes(wnids: list[str], edges: np.ndarray, n_classes: int, added: list[str],
                 instances: bool = True) -> ExtendedGraph:
    """The graph induced by ``wnids[:n_classes]`` (:func:`induced_graph`; ``edges`` child -> parent) with the
    classes ``added`` too: a node already in it (an ancestor, e.g. ``person``) moves among the classes; a
    synset new to it joins with its ancestors not yet there, linked as :func:`induced_graph` links them.
    The graph a trained GCN runs over to embed classes it was not trained with."""
    position = {w: i for i, w in enumerate(wnids)}
    if len(position) != len(wnids) or any(w in position and position[w] < n_classes for w in added):
        raise PipelineError("with_classes: the graph repeats a node, or a class to add is a class already")
    if len(set(added)) != len(added):
        raise PipelineError("with_classes: a class to add is listed twice")
    moved = set(added)
    nodes = wnids[:n_classes] + list(added) + [w for w in wnids[n_classes:] if w not in moved]
    index = {w: i for i, w in enumerate(nodes)}
    remap = np.array([index[w] for w in wnids], dtype=np.int64)
    new_edges: list[tuple[int, int]] = []
    walk = [w for w in added if w not in position]  # grows while iterating: breadth-first, upward
    for wnid in walk:
        synset = synset_of(wnid)
        parents = {*synset.hypernyms(), *(synset.instance_hypernyms() if instances else ())}
        for parent in sorted(parents, key=lambda s: s.offset()):  # each node's parents in offset order
            parent_wnid = wnid_of(parent)
            if parent_wnid not in index:
                index[parent_wnid] = len(nodes)
                nodes.append(parent_wnid)
                walk.append(parent_wnid)
            new_edges.append((index[wnid], index[parent_wnid]))
    edges = np.concatenate([remap[np.asarray(edges, dtype=np.int64).reshape(-1, 2)],
                            np.array(new_edges, dtype=np.int64).reshape(-1, 2)])
    source = np.array([position.get(w, -1) for w in nodes], dtype=np.int64)
    return ExtendedGraph(nodes, edges, n_classes + len(added), source)


def ancestor_edges(graph: KnowledgeGraph) -> tuple[np.ndarray, np.ndarray]:
    """Every (node, ancestor) pair with its hop distance, the shortest upward path (DGP's dense graph).

    Returns ``edges`` [E', 2] int64 and ``distance`` [E'] int64, sorted by node, distance, ancestor.
    """
    n = len(graph.wnids)
    up = _binary(n, graph.edges[:, 0], graph.edges[:, 1], np.int32)
    seen = up + sp.identity(n, dtype=np.int32, format="csr")
    frontier, hop = up, 1
    pairs, hops = [], []
    while frontier.nnz:  # frontier: the pairs first reached in `hop` steps
        coo = frontier.tocoo()
        pairs.append(np.stack([coo.row, coo.col], axis=1).astype(np.int64))
        hops.append(np.full(coo.nnz, hop, dtype=np.int64))
        step = (frontier @ up).tocsr()
        step.data[:] = 1
        frontier = step - step.multiply(seen)
        frontier.eliminate_zeros()
        seen = seen + frontier
        hop += 1
    edges = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    distance = np.concatenate(hops) if hops else np.empty(0, np.int64)
    order = np.lexsort((edges[:, 1], distance, edges[:, 0]))
    return edges[order], distance[order]


def _binary(n: int, rows: np.ndarray, cols: np.ndarray, dtype: type) -> sp.csr_matrix:
    """An n x n 0/1 CSR matrix with ones at (rows, cols), duplicates counted once."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=dtype), (rows, cols)), shape=(n, n))
    m.sum_duplicates()
    m.data[:] = 1
    return m
