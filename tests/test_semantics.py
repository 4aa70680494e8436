"""Class semantics: benchmark attributes, the semantics file, its per-part cache, the CLI."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from conftest import write_toy_store

from cli import cli
from pipeline.datasets.synthetic import generate_synthetic, synthetic_attributes
from pipeline.errors import PipelineError
from pipeline.semantics.attributes import align, normalise, read_attribute_names, read_attributes
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.semantics.file import SemanticsFile
from pipeline.semantics.text import WordVectors


def _feature_file(path: Path, classes: list[str]) -> Path:
    """A (pending) feature store whose only role here is to fix the class list and order."""
    return write_toy_store(path, np.arange(len(classes)), classes)


@pytest.mark.parametrize("name, shape", [("CUB", (200, 312)), ("SUN", (717, 102)), ("AWA2", (50, 85))])
def test_benchmark_attributes_follow_the_feature_file_class_order(shared_data, tmp_path, name, shape):
    path = shared_data / "gbu" / name / "att_splits.mat"
    mat = scipy.io.loadmat(str(path))
    names = [str(np.ravel(c)[0]) for c in mat["allclasses_names"].ravel()]
    raw = read_attributes(str(path))
    assert raw.values.shape == shape and raw.classes == names
    order = list(reversed(names))
    aligned = align(raw, order)
    np.testing.assert_allclose(aligned.values[0], mat["att"][:, -1], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(aligned.values, axis=1), 1, rtol=1e-5)  # att ships L2-normalised
    original = normalise(align(read_attributes(str(path), key="original_att"), order), "l2")
    np.testing.assert_allclose(original.values, aligned.values, atol=1e-5)
    with pytest.raises(PipelineError, match="no attributes for 1 of"):
        align(raw, order + ["not_a_class"])


def test_binary_awa2_attributes_and_benchmark_attribute_names(shared_data, tmp_path):
    binary = read_attributes(str(shared_data / "gbu" / "AWA2" / "binaryAtt_splits.mat"))
    assert binary.values.shape == (50, 85) and set(np.unique(binary.values)) == {0.0, 1.0}
    w2v = shared_data / "gbu_attribute_w2v"
    assert read_attribute_names(w2v / "CUB_attributes.txt")[:2] == ["has_bill_shape::curved_(up_or_down)",
                                                                       "has_bill_shape::dagger"]
    assert read_attribute_names(w2v / "AWA2_predicates.txt")[0] == "black"
    assert len(read_attribute_names(w2v / "SUN_attributes.mat")) == 102
    (tmp_path / "names.txt").write_text("1 black\n2\n")  # an index without its name
    with pytest.raises(PipelineError, match="names.txt:2: expected 'index name', got '2'$"):
        read_attribute_names(tmp_path / "names.txt")
    named = read_attributes(str(shared_data / "gbu" / "CUB" / "att_splits.mat"),
                            names_file=w2v / "CUB_attributes.txt")
    assert named.names[1] == "has_bill_shape::dagger"
    with pytest.raises(PipelineError, match="85 names for 312 attributes"):
        read_attributes(str(shared_data / "gbu" / "CUB" / "att_splits.mat"), names_file=w2v / "AWA2_predicates.txt")


def test_attribute_table_and_normalisation(tmp_path):
    table = tmp_path / "att.csv"
    table.write_text("class,striped,spotted\nzebra,1,0\nleopard,0,3\n")
    attrs = read_attributes(str(table))
    assert attrs.classes == ["zebra", "leopard"] and attrs.names == ["striped", "spotted"]
    assert normalise(attrs, "l2").values.tolist() == [[1, 0], [0, 1]]
    assert normalise(attrs, "none").values.tolist() == [[1, 0], [0, 3]]
    (tmp_path / "bad.csv").write_text("class,a\nzebra,yes\n")
    with pytest.raises(PipelineError, match="bad.csv: non-numeric"):
        read_attributes(str(tmp_path / "bad.csv"))
    (tmp_path / "zero.csv").write_text("class,a\nzebra,0\n")
    with pytest.raises(PipelineError, match="all-zero"):
        normalise(read_attributes(str(tmp_path / "zero.csv")), "l2")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, images_per_class=2, image_size=16)
    return root


def test_build_writes_every_part_and_reuses_unchanged_ones(synthetic_root, tmp_path):
    from pipeline.datasets.synthetic import load_synthetic

    classes = load_synthetic(synthetic_root).classes
    shuffled = list(np.random.default_rng(0).permutation(classes))
    features = _feature_file(tmp_path / "f.h5", shuffled)
    out = tmp_path / "sem.h5"
    cfg = SemanticsConfig(attributes="synthetic", data_root=str(synthetic_root), text=("glove", "minilm"),
                          attribute_vectors="glove")
    assert build_semantics(features, out, cfg) == ["attributes", "text/glove", "text/minilm", "attribute_text"]
    with SemanticsFile(out) as sem:
        assert sem.classes == shuffled
        assert sem.class_texts[0] == shuffled[0].replace("_", " ")
        values, names = sem.attributes()
        want, want_names = synthetic_attributes(synthetic_root)
        rows = [classes.index(c) for c in shuffled]
        np.testing.assert_allclose(values, want[rows] / np.linalg.norm(want[rows], axis=1, keepdims=True), rtol=1e-6)
        assert names == want_names
        minilm = sem.text("minilm")
        assert minilm.shape == (48, 384)
        np.testing.assert_allclose(np.linalg.norm(minilm, axis=1), 1, rtol=1e-5)
        assert sem.text("glove").shape == (48, 50) and sem.attribute_text().shape == (11, 50)
        assert sem.provenance("text/glove")["oov"] == []
        assert sem.provenance("attributes")["normalisation"] == "l2"
        with pytest.raises(PipelineError, match="no 'graph'"):
            sem.graph()

    fresh = out.read_bytes()
    time.sleep(1.1)  # HDF5 object times have one-second resolution
    assert build_semantics(features, out, cfg) == []
    assert out.read_bytes() == fresh  # reused parts, same bytes: DVC sees no change
    changed = SemanticsConfig(**{**cfg.__dict__, "normalisation": "none", "text": ("glove",)})
    assert build_semantics(features, out, changed) == ["attributes"]
    mixed = out.read_bytes()
    assert build_semantics(features, tmp_path / "again.h5", changed) == ["attributes", "text/glove", "attribute_text"]
    assert (tmp_path / "again.h5").read_bytes() == mixed  # rebuilt from scratch: the same bytes again
    with SemanticsFile(out) as sem:
        assert sem.text_encoders == ["glove"]
        assert sem.attributes()[0].max() == 1.0


def test_wordnet_graph_for_awa2_classes_mapped_to_synsets(shared_data, tmp_path):
    split = json.loads((shared_data / "imagenet" / "awa2-split.json").read_text())
    classes = split["train_names"] + split["test_names"]
    features = _feature_file(tmp_path / "f.h5", classes)
    cfg = SemanticsConfig(graph="wordnet", wnids=str(shared_data / "imagenet" / "awa2-split.json"),
                          text=("glove",))
    build_semantics(features, tmp_path / "sem.h5", cfg)
    with SemanticsFile(tmp_path / "sem.h5") as sem:
        g = sem.graph()
        assert g["n_classes"] == 50 and g["wnids"][:50] == split["train"] + split["test"]
        assert "n00001740" in g["wnids"]  # entity
        assert g["node_vectors"].shape == (len(g["wnids"]), 50) and g["node_text"] == "glove"
        assert sem.provenance("graph")["node_encoder"]["nodes_without_vector"] < 10  # all lemmas, as DGP
        # a node's vector is the mean over its lemmas GloVe knows of each lemma's mean word vector:
        # giant panda, panda, panda bear, coon bear, Ailuropoda melanoleuca (only melanoleuca is known)
        words = WordVectors.load()
        lemmas = [["giant", "panda"], ["panda"], ["panda", "bear"], ["coon", "bear"], ["melanoleuca"]]
        expected = np.mean([np.mean([words[w] for w in lemma], axis=0) for lemma in lemmas], axis=0)
        np.testing.assert_allclose(g["node_vectors"][g["wnids"].index("n02510455")], expected, rtol=1e-5, atol=1e-6)
        assert sem.class_texts[classes.index("killer+whale")] == "killer whale"
    with pytest.raises(PipelineError, match="no wnid for 1 classes"):
        build_semantics(_feature_file(tmp_path / "g.h5", classes + ["unicorn"]), tmp_path / "x.h5", cfg)


def test_cli_semantics_reports_what_it_built(synthetic_root, tmp_path):
    from pipeline.datasets.synthetic import load_synthetic

    features = _feature_file(tmp_path / "f.h5", load_synthetic(synthetic_root).classes)
    args = ["semantics", "--features", str(features), "--output", str(tmp_path / "s.h5"), "--attributes",
            "synthetic", "--data-root", str(synthetic_root), "--text", "glove"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "attributes/values            (48, 11)" in first.output and "built: attributes, text/glove" in first.output
    again = CliRunner().invoke(cli, args)
    assert "built: nothing" in again.output
    bad = CliRunner().invoke(cli, [*args[:-2], "--text", "word2vec"])
    assert bad.exit_code == 1 and "unknown text encoder 'word2vec'" in bad.output


def test_glosses_add_each_wordnet_class_definition_for_sentence_encoders(tmp_path):
    from pipeline.semantics import wordnet as wn
    from pipeline.semantics.text import minilm_embeddings

    classes = ["n02084071", "n02121808", "unicorn"]  # dog, domestic cat, and a class no synset names
    features = _feature_file(tmp_path / "f.h5", classes)
    build_semantics(features, tmp_path / "names.h5", SemanticsConfig(text=("minilm", "glove")))
    build_semantics(features, tmp_path / "glosses.h5", SemanticsConfig(text=("minilm", "glove"), glosses=True))
    assert wn.gloss_text("n02084071").startswith("dog, domestic dog, Canis familiaris: a member of the genus Canis")
    with SemanticsFile(tmp_path / "names.h5") as a, SemanticsFile(tmp_path / "glosses.h5") as b:
        names, glossed = a.text("minilm"), b.text("minilm")
        np.testing.assert_array_equal(a.text("glove"), b.text("glove"))  # word vectors keep the names
        assert b.provenance("text/minilm")["glosses"] == 2
    gloss = minilm_embeddings([wn.gloss_text(w) for w in classes[:2]])
    expected = names[:2] + gloss
    np.testing.assert_allclose(glossed[:2], expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(glossed[2], names[2])  # no synset, no definition: its name alone
    assert np.all(np.sum(names[:2] * glossed[:2], axis=1) < 0.99)
    # names mapped to synsets by a wnids map: the same definitions, after each name's own embedding
    mapped = _feature_file(tmp_path / "m.h5", ["hound", "kitty"])
    (tmp_path / "wnids.json").write_text(json.dumps({"hound": classes[0], "kitty": classes[1]}))
    build_semantics(mapped, tmp_path / "mapped.h5", SemanticsConfig(text=("minilm",), glosses=True,
                                                                    wnids=str(tmp_path / "wnids.json")))
    with SemanticsFile(tmp_path / "mapped.h5") as m:
        expected = minilm_embeddings(["hound", "kitty"]) + gloss
        np.testing.assert_allclose(m.text("minilm"), expected / np.linalg.norm(expected, axis=1, keepdims=True),
                                   atol=1e-5)

    with pytest.raises(PipelineError, match="none of the encoders .* reads a definition"):
        build_semantics(features, tmp_path / "x.h5", SemanticsConfig(text=("glove",), glosses=True))
    with pytest.raises(PipelineError, match="no class is a WordNet id"):
        build_semantics(_feature_file(tmp_path / "g.h5", ["unicorn", "dragon"]), tmp_path / "x.h5",
                        SemanticsConfig(text=("minilm",), glosses=True))
    assert not (tmp_path / "x.h5").exists()


def test_graph_node_vectors_of_several_encoders_are_concatenated_unit_parts(tmp_path):
    from pipeline.semantics import wordnet as wn
    from pipeline.semantics.text import minilm_embeddings

    classes = ["n02084071", "n02121808", "n02374451"]  # dog, domestic cat, horse
    features = _feature_file(tmp_path / "f.h5", classes)
    for name, graph_text, glosses in (("minilm", "minilm", False), ("glove", "glove", False),
                                      ("both", "minilm+glove", True)):
        build_semantics(features, tmp_path / f"{name}.h5", SemanticsConfig(text=("minilm",), graph="wordnet",
                                                                         graph_text=graph_text, glosses=glosses))
    with SemanticsFile(tmp_path / "minilm.h5") as m, SemanticsFile(tmp_path / "glove.h5") as g, \
            SemanticsFile(tmp_path / "both.h5") as b:
        minilm, glove, both = (f.graph()["node_vectors"] for f in (m, g, b))
        wnids = b.graph()["wnids"]
        assert b.graph()["node_text"] == "minilm+glove" and wnids == m.graph()["wnids"]
        assert "gloss" in b.provenance("graph")["node_vectors"]
    assert both.shape == (len(wnids), 384 + 50)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(both[:, 384:], unit(glove), atol=1e-6)  # GloVe reads no definition
    glossed = (minilm + minilm_embeddings([wn.gloss_text(w) for w in wnids])) / 2
    np.testing.assert_allclose(both[:, :384], unit(glossed), atol=1e-5)
    with pytest.raises(PipelineError, match="'minilm\\+minilm' names an encoder twice"):
        build_semantics(features, tmp_path / "x.h5", SemanticsConfig(graph="wordnet", graph_text="minilm+minilm"))
    separated = "^graph_text 'minilm glove': join several encoders with '\\+' \\(minilm\\+glove\\)$"
    with pytest.raises(PipelineError, match=separated):
        build_semantics(features, tmp_path / "x.h5", SemanticsConfig(graph="wordnet", graph_text="minilm glove"))
    assert not (tmp_path / "x.h5").exists()
