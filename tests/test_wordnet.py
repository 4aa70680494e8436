"""WordNet 3.0 (Debian's wordnet-base) and the class hypernym graphs built on it."""
from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import nltk.data
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models.base import normalized_adjacency
from pipeline.semantics.wordnet import (
    ENTITY,
    KnowledgeGraph,
    ancestor_edges,
    class_lemma,
    induced_graph,
    lexnames_text,
    synset_of,
    wnid_of,
    wordnet,
)

ZEBRA, EQUINE, ODD_TOED, UNGULATE, HORSE, SUN, STAR = (
    "n02391049", "n02374149", "n02373336", "n02370806", "n02374451", "n09450163", "n09444100",
)
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")


@pytest.fixture(scope="module")
def imagenet(shared_data: Path) -> dict[str, list[str]]:
    return json.loads((shared_data / "imagenet" / "imagenet-testsets.json").read_text())


@pytest.fixture(scope="module")
def awa2(shared_data: Path) -> list[str]:
    split = json.loads((shared_data / "imagenet" / "awa2-split.json").read_text())
    return split["train"] + split["test"]


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NLTK data folder that ``wordnet()`` laid out."""
    data_dir = tmp_path_factory.mktemp("nltk_data")
    wordnet(data_dir=data_dir)
    return data_dir


def parents_of(graph: KnowledgeGraph) -> dict[int, set[int]]:
    parents: dict[int, set[int]] = {i: set() for i in range(len(graph.wnids))}
    for child, parent in graph.edges.tolist():
        parents[child].add(parent)
    return parents


def reaches(parents: dict[int, set[int]], start: int, goal: int) -> bool:
    todo, seen = [start], {start}
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        todo.extend(parents[node] - seen)
        seen |= parents[node]
    return False


def check_graph(graph: KnowledgeGraph, classes: list[str]) -> None:
    n = len(graph.wnids)
    assert graph.wnids[: len(classes)] == classes and graph.n_classes == len(classes)
    assert len(set(graph.wnids)) == n and len(graph.names) == n
    assert graph.edges.dtype == np.int64 and graph.edges.shape[1] == 2
    assert graph.edges.min() >= 0 and graph.edges.max() < n
    assert len({tuple(e) for e in graph.edges.tolist()}) == len(graph.edges), "duplicate edges"
    parents, root = parents_of(graph), graph.wnids.index(ENTITY)
    assert all(reaches(parents, i, root) for i in range(n))
    assert all(parents[i] for i in range(n) if i != root), "every node but entity has a parent"
    a = normalized_adjacency(n, graph.edges)
    assert a.dtype == np.float32 and a.shape == (n, n)
    assert np.isfinite(a.data).all() and abs(a - a.T).max() < 1e-6


def test_reader_is_wordnet_30() -> None:
    wn = wordnet()
    assert wn.get_version() == "3.0" and wordnet() is wn
    assert synset_of(ENTITY).name() == "entity.n.01"


@pytest.mark.skipif(not LEXNAMES_MAN.is_file(), reason="lexnames(5WN) man page not installed (dpkg path-exclude)")
def test_lexnames_match_the_man_page() -> None:
    man = gzip.decompress(LEXNAMES_MAN.read_bytes()).decode()
    rows = re.findall(r"^(\d\d)\t(\S+)", man, flags=re.MULTILINE)
    assert [line.split("\t")[:2] for line in lexnames_text().splitlines()] == [list(r) for r in rows]
    assert len(rows) == 45


def test_layout_in_a_data_dir(laid_out: Path) -> None:
    wn = wordnet(data_dir=laid_out)
    root = laid_out / "corpora" / "wordnet"
    assert (root / "lexnames").read_text() == lexnames_text()
    assert all(p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o022 == 0 for p in root.iterdir())
    assert wn.synset_from_pos_and_offset("n", int(ZEBRA[1:])).name() == "zebra.n.01"


def test_falls_back_to_nltk_data(laid_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nltk.data, "path", [str(laid_out)])  # as `python -m nltk.downloader wordnet` leaves it
    wn = wordnet(data_dir=tmp_path / "unused", source=tmp_path / "no-wordnet")
    assert Path(wn.root.path) == laid_out / "corpora" / "wordnet" and not (tmp_path / "unused").exists()


def test_missing_wordnet_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nltk.data, "path", [])  # hide any NLTK-downloaded wordnet too
    with pytest.raises(PipelineError, match="apt-get install -y wordnet-base wordnet-sense-index") as err:
        wordnet(data_dir=tmp_path / "cache", source=tmp_path / "no-wordnet")
    assert "\n" not in str(err.value) and "nltk.downloader wordnet" in str(err.value)


def test_unusable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(PipelineError, match="data_dir"):
        wordnet(data_dir=tmp_path / "file")


def test_wnids_and_lemmas() -> None:
    assert wnid_of(synset_of(ZEBRA)) == ZEBRA
    assert [wnid_of(s) for s in synset_of(ZEBRA).hypernyms()] == [EQUINE]
    assert class_lemma(ZEBRA) == "zebra" and class_lemma(HORSE) == "horse"
    assert class_lemma("n02106662") == "German shepherd" and class_lemma(ODD_TOED) == "odd-toed ungulate"


@pytest.mark.parametrize("wnid", ["n99999999", "n02391050", "n2391049", "zebra", "n02391049 ", "v01831531"])
def test_bad_wnid(wnid: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(repr(wnid))):
        synset_of(wnid)


def test_duplicate_class() -> None:
    with pytest.raises(PipelineError, match="twice"):
        induced_graph([ZEBRA, HORSE, ZEBRA])


def test_all_test_wnids_resolve(imagenet: dict[str, list[str]]) -> None:
    for key in ("train", "2-hops", "3-hops"):
        for wnid in imagenet[key]:
            assert wnid_of(synset_of(wnid)) == wnid


def test_awa2_graph(awa2: list[str]) -> None:
    graph = induced_graph(awa2)
    check_graph(graph, awa2)
    index = {w: i for i, w in enumerate(graph.wnids)}
    edges = {tuple(e) for e in graph.edges.tolist()}
    assert (index[ZEBRA], index[EQUINE]) in edges and (index[HORSE], index[EQUINE]) in edges
    assert (index[EQUINE], index[ODD_TOED]) in edges and (index[ODD_TOED], index[UNGULATE]) in edges
    assert graph.names[index[ZEBRA]] == "zebra"


def test_imagenet_2hops_sample_graph(imagenet: dict[str, list[str]]) -> None:
    classes = random.Random(0).sample(imagenet["2-hops"], 200)
    check_graph(induced_graph(classes), classes)


def test_instance_classes_reach_entity() -> None:
    # sun.n.01 (an ImageNet-21K class) has an instance hypernym (star) and no plain hypernym
    graph = induced_graph([SUN])
    check_graph(graph, [SUN])
    assert graph.wnids[1] == STAR and graph.edges[0].tolist() == [0, 1]
    dgp = induced_graph([SUN, ZEBRA], instances=False)  # DGP follows hypernyms only: the sun stays alone
    assert dgp.wnids[:2] == [SUN, ZEBRA] and STAR not in dgp.wnids
    assert 0 not in dgp.edges and dgp.lemmas[0][0] == "sun"


def test_ancestor_edges_on_the_zebra_chain() -> None:
    graph = induced_graph([ZEBRA])
    chain = ["zebra", "equine", "odd-toed ungulate", "ungulate", "placental", "mammal", "vertebrate", "chordate",
             "animal", "organism", "living thing", "whole", "object", "physical entity", "entity"]
    assert graph.names == chain  # a single path: node i is i hops above zebra
    edges, distance = ancestor_edges(graph)
    assert len(edges) == len(chain) * (len(chain) - 1) // 2
    assert (distance == edges[:, 1] - edges[:, 0]).all()
    assert edges[:3].tolist() == [[0, 1], [0, 2], [0, 3]] and distance[:3].tolist() == [1, 2, 3]


def test_ancestor_edges_take_the_shortest_path() -> None:
    # 0 -> 1 -> 2 -> 3 and a shortcut 0 -> 3; 4 is isolated
    graph = KnowledgeGraph(wnids=list("abcde"), names=list("abcde"), lemmas=[[c] for c in "abcde"],
                           edges=np.array([[0, 1], [1, 2], [2, 3], [0, 3]]), n_classes=1)
    edges, distance = ancestor_edges(graph)
    assert dict(zip(map(tuple, edges.tolist()), distance.tolist(), strict=True)) == {
        (0, 1): 1, (0, 2): 2, (0, 3): 1, (1, 2): 1, (1, 3): 2, (2, 3): 1}
    assert edges.dtype == distance.dtype == np.int64


@pytest.mark.parametrize("self_loops", [True, False])
def test_normalized_adjacency_by_hand(self_loops: bool) -> None:
    edges = np.array([[0, 1], [1, 2], [0, 1], [1, 0], [2, 3]])  # duplicates count once; node 4 is isolated
    a = np.zeros((5, 5))
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    a += np.eye(5) if self_loops else 0
    degree = a.sum(1)
    scale = np.where(degree > 0, degree, 1) ** -0.5 * (degree > 0)
    expected = scale[:, None] * a * scale[None, :]
    got = normalized_adjacency(5, edges, self_loops=self_loops)
    assert got.format == "csr" and got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-6)
    assert self_loops or got[4].nnz == 0


def test_dgp_adjacency_averages_each_node_with_its_neighbours() -> None:
    # DGP: edges made undirected plus self-loops, then normt_spm(method='in'): D^-1 (A + I)
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]) / np.array([[2], [3], [3], [2]])
    got = normalized_adjacency(4, edges, kind="dgp")
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got.sum(axis=1)).ravel(), 1.0, rtol=1e-6)  # rows are means


def test_normalized_adjacency_rejects_bad_edges() -> None:
    with pytest.raises(PipelineError, match="outside"):
        normalized_adjacency(3, np.array([[0, 3]]))
    with pytest.raises(PipelineError, match="adjacency 'mean' unknown"):
        normalized_adjacency(3, np.array([[0, 1]]), kind="mean")
