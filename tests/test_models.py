"""Zero-shot models: ESZSL's closed form, unseen-class accuracy on a small synthetic ZSL problem,
determinism, state round-trips, class graphs, and the CLIP input checks."""
from __future__ import annotations

import io
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_toy_store

from pipeline.choices import MODEL_NAMES
from pipeline.errors import PipelineError
from pipeline.grid import GridSource
from pipeline.models import MODELS, make_model
from pipeline.models.base import Graph, Semantics, Split, normalized_adjacency
from pipeline.models import class_graph as class_graph_module
from pipeline.models.class_graph import class_graph, knn_graph, smoothed_class_vectors
from pipeline.models.eszsl import ESZSL
from pipeline.models.gcn import _GraphInputs, class_hidden
from pipeline.models.layers import CPUFastDropout, GCN, GraphConv, Propagation, sparse_tensor
from pipeline.models.memo import by_content

TRAINABLE = ["eszsl", "joint_gcn", "gcn_regression", "cfzsl"]  # well above chance on these features
N_CLASSES, N_SEEN, PER_CLASS = 20, 15, 30


class Problem:
    """20 classes with random binary attributes [20, 16]; CNN features = attributes @ P [16 -> 64] + noise,
    their grid (4 regions, streamed from a store in ``root``) the features plus noise per region, CLIP
    features = attributes @ Q [16 -> 32] + noise, CLIP text = attributes @ R [16 -> 32] + noise, random
    8-d attribute-name vectors; 30 images per class; classes 0..14 seen, 15..19 unseen. Every model,
    the attention models included, reads what it needs of it."""

    def __init__(self, root: Path, seed: int = 8, noise: float = 0.5):
        rng = np.random.default_rng(seed)
        attributes = (rng.random((N_CLASSES, 16)) < 0.5).astype(np.float32)
        labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)

        def view(dim: int) -> np.ndarray:
            projection = rng.normal(size=(16, dim)).astype(np.float32)
            return attributes[labels] @ projection + noise * rng.normal(size=(len(labels), dim)).astype(np.float32)

        features, clip = view(64), view(32)
        grid = features[:, None, :] + noise * rng.normal(size=(len(labels), 4, 64)).astype(np.float32)
        path = write_toy_store(root / "grid.h5", labels, N_CLASSES, pooled=features, grid=grid)
        text = attributes @ rng.normal(size=(16, 32)).astype(np.float32)
        text += 0.3 * rng.normal(size=text.shape).astype(np.float32)
        self.seen, self.unseen = np.arange(N_SEEN), np.arange(N_SEEN, N_CLASSES)
        data = Split(features, labels, {"clip": clip}, GridSource(path, np.arange(len(labels))))
        self.train = data.subset(np.flatnonzero(labels < N_SEEN))
        self.test = data.subset(np.flatnonzero(labels >= N_SEEN))
        self.semantics = Semantics(attributes, {"clip": text},
                                   attribute_vectors=rng.normal(size=(16, 8)).astype(np.float32))

    def czsl_accuracy(self, model) -> float:
        """Per-class top-1 accuracy on the unseen images, candidates = unseen classes only."""
        scores = model.image_embeddings(self.test) @ model.class_embeddings(self.semantics)[self.unseen].T
        predicted = self.unseen[scores.argmax(axis=1)]
        return float(np.mean([np.mean(predicted[self.test.labels == c] == c) for c in self.unseen]))


@pytest.fixture(scope="module")
def problem(tmp_path_factory) -> Problem:
    return Problem(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def fitted(problem: Problem) -> dict[str, tuple[object, dict]]:
    """Every model fitted once with seed 0, at its defaults: {name: (model, fit log)}."""
    out = {}
    for name in MODELS:
        model = make_model(name)
        out[name] = (model, model.fit(problem.train, problem.seen, problem.semantics, seed=0))
    return out


def scores(model, problem: Problem) -> np.ndarray:
    return model.image_embeddings(problem.test) @ model.class_embeddings(problem.semantics).T


# --- registry -----------------------------------------------------------------------------------------------


def test_registry_names_every_model_and_rejects_unknown_names():
    assert set(MODELS) == {"eszsl", "joint_gcn", "gcn_regression", "conse", "cfzsl", "clip_prompt", "msdn", "drmn", "sdl"}
    assert tuple(MODELS) == MODEL_NAMES  # what the command line offers (--model) is what make_model builds
    assert all(cls.name == name for name, cls in MODELS.items())
    with pytest.raises(PipelineError, match="unknown model 'svm'.*eszsl"):
        make_model("svm")
    with pytest.raises(PipelineError, match="unknown hyperparameters"):
        make_model("joint_gcn", learning_rate=0.1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grids_are_small_and_name_known_hyperparameters(name):
    cls = MODELS[name]
    assert set(cls.search_space) <= set(cls.defaults) and set(cls.inference_hparams) <= set(cls.defaults)
    fits = len(list(itertools.product(*(v for k, v in cls.search_space.items() if k not in cls.inference_hparams))))
    # closed forms whose per-fold work selection reuses (pipeline.models.memo): ESZSL, the GCNs' start;
    # hyperparameters read only when embedding are scored on the same fit
    assert fits <= {"eszsl": 75, "gcn_regression": 8, "joint_gcn": 8}.get(name, 4)
    assert len(list(itertools.product(*(v for k, v in cls.search_space.items() if k in cls.inference_hparams)))) <= 6
    make_model(name, **{k: v[-1] for k, v in cls.search_space.items()})  # every grid value is accepted


# --- ESZSL --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["zero_one", "plus_minus_one"])
@pytest.mark.parametrize("n, d, a", [(80, 12, 6), (10, 30, 3)])  # both Gram matrices, both sides of S
def test_eszsl_is_its_closed_form_and_scores_are_x_v_s(coding, n, d, a):
    rng = np.random.default_rng(0)
    n_classes = 7
    seen = np.array([0, 2, 3, 5])
    labels = rng.choice(seen, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    s_all = rng.normal(size=(n_classes, a)).astype(np.float32)
    gamma, lam = 3.0, 0.5

    # the authors' code: {0, 1} (default); the paper's text: {-1, +1}
    y = np.zeros((n, len(seen))) if coding == "zero_one" else -np.ones((n, len(seen)))
    y[np.arange(n), np.searchsorted(seen, labels)] = 1.0
    x64, s64 = x.astype(np.float64), s_all[seen].astype(np.float64)
    expected = np.linalg.inv(x64.T @ x64 + gamma * np.eye(d)) @ x64.T @ y @ s64 @ np.linalg.inv(
        s64.T @ s64 + lam * np.eye(a))

    model = ESZSL(gamma=gamma, lam=lam, labels=coding)
    log = model.fit(Split(x, labels), seen, Semantics(s_all), seed=0)
    assert log["loss"] == [] and log["seconds"] >= 0
    np.testing.assert_allclose(model.state()["V"][:-1], expected, rtol=1e-4, atol=1e-6)
    assert not model.state()["V"][-1].any()  # no bias without head supervision
    score = model.image_embeddings(Split(x, labels)) @ model.class_embeddings(Semantics(s_all)).T
    np.testing.assert_allclose(score, x64 @ expected @ s_all.T.astype(np.float64), rtol=1e-4, atol=1e-5)


def test_training_labels_must_be_seen_classes(problem):
    with pytest.raises(PipelineError, match="seen classes only"):
        make_model("eszsl").fit(problem.test, problem.seen, problem.semantics, seed=0)


# --- every trainable model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINABLE)
def test_unseen_class_accuracy_is_well_above_chance(name, problem, fitted):
    model, log = fitted[name]
    chance = 1 / len(problem.unseen)
    assert problem.czsl_accuracy(model) >= 2.5 * chance
    assert log["seconds"] < 30
    assert all(np.isfinite(log["loss"]))
    if name in ("joint_gcn", "gcn_regression"):  # DGP's loss after the closed form (and joint_gcn's epochs)
        assert len(log["loss"]) == 1 + (name == "joint_gcn") and max(log["loss"]) < 0.5
        assert log["supervision"] == "ridge"
        exact = make_model(name, ridge=1e-6, epochs=0)  # the closed form interpolates the 15 anchors
        assert exact.fit(problem.train, problem.seen, problem.semantics, seed=0)["loss"][0] < 1e-3
    elif name != "eszsl":
        assert len(log["loss"]) == model.hparams["epochs"] and log["loss"][-1] < log["loss"][0]


@pytest.mark.parametrize("name", ["joint_gcn", "gcn_regression"])
def test_gcn_models_regress_the_backbone_classifier_rows_of_seen_classes_only(name, problem):
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(N_CLASSES, problem.train.features.shape[1] + 1)).astype(np.float32)
    with_head = Semantics(problem.semantics.vectors, classifiers=rows)
    model = make_model(name, ridge=1e-5)
    log = model.fit(problem.train, problem.seen, with_head, seed=0)
    assert log["supervision"] == "head"
    predicted = model.class_embeddings(with_head)[problem.seen]
    if name == "gcn_regression":  # the predicted classifiers of seen classes are close to their (unit) rows
        unit = rows[problem.seen] / np.linalg.norm(rows[problem.seen], axis=1, keepdims=True)
        assert np.min(np.sum(predicted * unit, axis=1)) > 0.95
    poisoned = rows.copy()
    poisoned[problem.unseen] = 1e6  # rows of unseen classes are never read
    again = make_model(name, ridge=1e-5)
    again.fit(problem.train, problem.seen, Semantics(problem.semantics.vectors, classifiers=poisoned), seed=0)
    np.testing.assert_allclose(again.class_embeddings(with_head), model.class_embeddings(with_head), atol=1e-6)
    missing = rows.copy()
    missing[problem.seen[0]] = np.nan  # a seen class the head does not cover: ridge anchors, or an error if forced
    fallback = Semantics(problem.semantics.vectors, classifiers=missing)
    assert make_model(name).fit(problem.train, problem.seen, fallback, seed=0)["supervision"] == "ridge"
    with pytest.raises(PipelineError, match="supervision=head.*no classifier row for 1 of the 15 seen"):
        make_model(name, supervision="head").fit(problem.train, problem.seen, fallback, seed=0)


@pytest.mark.parametrize("name", ["joint_gcn", "gcn_regression", "cfzsl", "msdn", "drmn", "sdl"])
def test_another_seed_gives_another_network(name, problem, fitted):
    other = make_model(name)
    other.fit(problem.train, problem.seen, problem.semantics, seed=1)
    assert not np.array_equal(scores(fitted[name][0], problem), scores(other, problem))


# --- the contract of every model (timm's pattern: each test runs over the whole registry) -------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_fits_and_scores_every_class_with_finite_numbers(name, problem, fitted):
    model, log = fitted[name]
    assert np.isfinite(log.get("loss", [])).all() and "seconds" in log
    images, classes = model.image_embeddings(problem.test), model.class_embeddings(problem.semantics)
    assert images.dtype == classes.dtype == np.float32 and len(images) == len(problem.test)
    assert len(classes) == N_CLASSES and np.isfinite(scores(model, problem)).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_reproducible_from_its_seed(name, problem, fitted):
    again = make_model(name)
    again.fit(problem.train, problem.seen, problem.semantics, seed=0)
    np.testing.assert_array_equal(scores(again, problem), scores(fitted[name][0], problem))


@pytest.mark.parametrize("name", sorted(name for name, cls in MODELS.items() if cls.inference_hparams))
def test_inference_hyperparameters_are_not_read_by_fit(name, problem, fitted):
    """Selection fits once for all values of these (pipeline.train): a fit at other values, read at the
    defaults, must score as the fit at the defaults."""
    cls = MODELS[name]
    other = {k: cls.search_space.get(k, [cls.defaults[k]])[-1] for k in cls.inference_hparams}
    assert other != {k: cls.defaults[k] for k in other}, "no other value to fit with"
    model = make_model(name, **other)
    model.fit(problem.train, problem.seen, problem.semantics, seed=0)
    model.hparams = {**model.hparams, **{k: cls.defaults[k] for k in other}}
    np.testing.assert_array_equal(scores(model, problem), scores(fitted[name][0], problem))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_state_round_trip_gives_identical_scores(name, problem, fitted):
    model = fitted[name][0]
    buffer = io.BytesIO()
    torch.save(model.state(), buffer)  # (the checkpoint stores numpy arrays as tensors: tests/test_train.py)
    buffer.seek(0)
    restored = make_model(name, **model.hparams)
    restored.load_state(torch.load(buffer, weights_only=False))
    np.testing.assert_array_equal(scores(restored, problem), scores(model, problem))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_untrained_model_says_so_or_needs_no_training(name, problem, fitted):
    model = fitted[name][0]
    if not model.state():  # nothing learnt (clip_prompt): the untrained model scores as the fitted one
        np.testing.assert_array_equal(scores(make_model(name), problem), scores(model, problem))
        return
    with pytest.raises(PipelineError, match=f"^{name}: the model is not trained; call fit or load_state first$"):
        make_model(name).image_embeddings(problem.test)


def test_cosine_models_return_unit_embeddings(problem, fitted):
    cfzsl = fitted["cfzsl"][0]
    for emb in (cfzsl.image_embeddings(problem.test), cfzsl.class_embeddings(problem.semantics)):
        assert emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # joint_gcn: the GCN route's unit vector, then the semantic route's scaled by sqrt(semantic_weight): the
    # score is the one cosine plus semantic_weight times the other
    joint = fitted["joint_gcn"][0]
    rank, weight = joint.net.basis.shape[0], joint.hparams["semantic_weight"]
    assert weight > 0
    for emb in (joint.image_embeddings(problem.test), joint.class_embeddings(problem.semantics)):
        assert emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb[:, :rank], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(emb[:, rank:], axis=1), np.sqrt(weight), atol=1e-5)
    gcnz = fitted["gcn_regression"][0]
    np.testing.assert_allclose(np.linalg.norm(gcnz.class_embeddings(problem.semantics), axis=1), 1.0, atol=1e-5)
    images = gcnz.image_embeddings(problem.test)  # raw features and the bias input
    np.testing.assert_array_equal(images, np.hstack([problem.test.features, np.ones((len(images), 1))]))


# --- graphs -------------------------------------------------------------------------------------------------


def test_gcn_layer_propagates_then_adds_the_bias_as_dgp():
    adjacency = normalized_adjacency(5, np.array([[0, 1], [1, 2], [3, 4]]), kind="dgp")
    cpu = torch.device("cpu")
    a, every_node = sparse_tensor(adjacency, cpu), Propagation(adjacency, None, cpu)
    nodes = torch.randn(5, 7)
    gcn = GCN(7, 11, 3, dropout=0.5).eval()
    assert gcn(nodes, every_node).shape == (5, 3)
    layer = GraphConv(7, 4, dropout=0.0)
    with torch.no_grad():
        layer.bias.fill_(0.25)
        expected = torch.as_tensor(adjacency.toarray()) @ (nodes @ layer.weight) + 0.25  # A (X W) + b
        torch.testing.assert_close(layer(nodes, a), expected)
        hidden = torch.as_tensor(adjacency.toarray()) @ torch.nn.functional.leaky_relu(gcn.layer1(nodes, a), 0.2)
        torch.testing.assert_close(gcn.hidden(nodes, every_node), hidden)
        torch.testing.assert_close(gcn(nodes, every_node), hidden @ gcn.layer2.weight + gcn.layer2.bias)
        # the outputs of nodes 0 and 3 only: layer 1 for the nodes they read (0, 1, 3, 4), not node 2
        some = Propagation(adjacency, np.array([0, 3]), cpu)
        assert some.first.shape == (4, 5) and some.second.shape == (2, 4)
        torch.testing.assert_close(gcn(nodes, some), gcn(nodes, every_node)[[0, 3]])
        widening = GraphConv(7, 20, dropout=0.0)  # computed as (A X) W: the same product
        expected = torch.as_tensor(adjacency.toarray()) @ (nodes @ widening.weight)
        torch.testing.assert_close(widening(nodes, a), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_fast_dropout_drops_the_given_fraction_keeps_the_mean_and_follows_the_seed(p):
    x = torch.ones(400, 500)
    dropout = CPUFastDropout(p)
    torch.manual_seed(3)
    first = dropout(x)
    assert abs((first == 0).float().mean().item() - p) < 0.01  # the given fraction, element by element
    assert abs(first.mean().item() - 1.0) < 0.02  # survivors scaled by 1 / (1 - p)
    assert first.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x), first)  # seed_everything fixes the masks
    assert not torch.equal(dropout(x), first)  # and each call draws a new one
    torch.testing.assert_close(dropout.eval()(x), x)


def test_knn_graph_links_most_similar_classes_symmetrically():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32)
    graph = knn_graph(vectors, k=1)
    assert graph.n_classes == 5 and graph.node_vectors is not None
    np.testing.assert_array_equal(graph.node_vectors, vectors)
    linked = graph.adjacency("symmetric").toarray() > 0
    assert (linked == linked.T).all() and linked.diagonal().all()
    assert linked[0, 1] and linked[2, 3] and not linked[0, 2]
    np.testing.assert_allclose(graph.adjacency("dgp").toarray(),
                               normalized_adjacency(5, np.argwhere(np.triu(linked, 1)), kind="dgp").toarray())


def test_knn_graph_breaks_ties_by_class_index_in_row_chunks(monkeypatch):
    """Each class's k neighbours are those of a stable sort of its similarities (ties to the lower index),
    whether its similarities come in one block or in chunks of rows (ImageNet-21K's would be 1.9 GB)."""
    vectors = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, 50)]  # cosines 0 or 1: ties
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :3]
    whole = knn_graph(vectors, 3)
    np.testing.assert_array_equal(whole.edges[:, 1].reshape(50, 3), expected)
    assert knn_graph(vectors.copy(), 3) is whole  # kept for equal vectors: selection asks at every grid point
    monkeypatch.setattr(class_graph_module, "_KNN_CELLS", 50 * 7)  # chunks of 7 rows
    np.testing.assert_array_equal(knn_graph(vectors + 0, 2).edges[:, 1].reshape(50, 2), expected[:, :2])


def hand_graph(semantics: Semantics) -> Graph:
    """Classes 0..19 plus two parent nodes: 0..9 under node 20, 10..19 under node 21, 20 ~ 21; 8-d node vectors."""
    edges = [[c, 20 if c < 10 else 21] for c in range(N_CLASSES)] + [[20, 21]]
    vectors = np.random.default_rng(3).normal(size=(N_CLASSES + 2, 8)).astype(np.float32)
    return Graph(np.array(edges), vectors, N_CLASSES)


@pytest.mark.parametrize("name", ["joint_gcn", "gcn_regression"])
def test_gcn_models_use_the_given_graph_else_a_knn_graph(name, problem, fitted):
    with_graph = Semantics(problem.semantics.vectors, problem.semantics.text, hand_graph(problem.semantics))
    assert class_graph(name, with_graph, k=3) is with_graph.graph
    model = make_model(name, epochs=3)
    model.fit(problem.train, problem.seen, with_graph, seed=0)
    assert model.sizes[0] == 8  # the hand graph's node vectors, not the 16 attributes
    embeddings = model.class_embeddings(with_graph)
    assert embeddings.shape[0] == N_CLASSES and np.isfinite(embeddings).all()
    rewired = Semantics(with_graph.vectors, graph=Graph(np.zeros((0, 2), np.int64), with_graph.graph.node_vectors,
                                                        N_CLASSES))
    assert not np.allclose(model.class_embeddings(rewired), embeddings)  # the adjacency is what it reads

    knn = fitted[name][0]  # fitted without a graph: the k-NN graph over the 16-d attributes
    assert knn.sizes[0] == 16
    assert problem.semantics.graph is None


def test_graph_node_vectors_must_come_from_the_chosen_text_encoder(problem):
    graph = hand_graph(problem.semantics)
    glove_graph = Graph(graph.edges, graph.node_vectors, N_CLASSES, node_encoder="glove")
    asked = Semantics(problem.semantics.vectors, graph=glove_graph, source="text:minilm")
    with pytest.raises(PipelineError, match="node vectors come from glove.*text:minilm.*--graph-text minilm"):
        make_model("gcn_regression").fit(problem.train, problem.seen, asked, seed=0)
    same = Semantics(problem.semantics.vectors, graph=glove_graph, source="text:glove")
    make_model("gcn_regression").fit(problem.train, problem.seen, same, seed=0)
    both = Graph(graph.edges, graph.node_vectors, N_CLASSES, node_encoder="minilm+glove")  # concatenated vectors
    make_model("gcn_regression").fit(problem.train, problem.seen, replace(same, graph=both), seed=0)
    with pytest.raises(PipelineError, match="come from minilm\\+glove .* --source text:minilm or"):
        make_model("gcn_regression").fit(problem.train, problem.seen,
                                         replace(same, graph=both, source="text:clip"), seed=0)


def test_graph_steps_average_each_class_vector_with_its_graph_neighbours(problem):
    graph = hand_graph(problem.semantics)
    text = Semantics(graph.node_vectors[:N_CLASSES], graph=Graph(graph.edges, graph.node_vectors, N_CLASSES, "glove"),
                     source="text:glove")
    np.testing.assert_array_equal(smoothed_class_vectors("eszsl", text, 0, 3), text.vectors)
    unit = graph.node_vectors / np.linalg.norm(graph.node_vectors, axis=1, keepdims=True)
    once = smoothed_class_vectors("eszsl", text, 1, 3)
    np.testing.assert_allclose(once[0], (unit[0] + unit[20]) / 2, rtol=1e-5)  # class 0 and its parent
    twice = smoothed_class_vectors("eszsl", text, 2, 3)
    parent = (unit[20] + unit[21] + unit[:10].sum(0)) / 12  # node 20 after one step: itself, 21, classes 0..9
    np.testing.assert_allclose(twice[0], (once[0] + parent) / 2, rtol=1e-5)
    # attributes are not in the graph's word-vector space: their own k-NN graph is used
    attributes = Semantics(problem.semantics.vectors, graph=text.graph, source="attributes")
    knn = knn_graph(problem.semantics.vectors, 3)
    np.testing.assert_allclose(smoothed_class_vectors("eszsl", attributes, 1, 3),
                               knn.adjacency("dgp") @ (knn.node_vectors / np.linalg.norm(knn.node_vectors, axis=1,
                                                                                        keepdims=True)), rtol=1e-5)
    for name in ("eszsl", "conse"):  # a class outside the WordNet graph cannot be smoothed: predict refuses it
        assert make_model(name, graph_steps=2).reads_graph(text) and not make_model(name).reads_graph(text)
        assert not make_model(name, graph_steps=2).reads_graph(attributes)  # a k-NN graph takes any class
        model = make_model(name, graph_steps=2)
        model.fit(problem.train, problem.seen, text, seed=0)
        assert model.class_embeddings(text).shape == (N_CLASSES, 8)


def test_joint_gcn_route_steps_average_its_semantic_routes_class_vectors_over_the_graph(problem):
    graph = hand_graph(problem.semantics)
    text = Semantics(graph.node_vectors[:N_CLASSES], graph=Graph(graph.edges, graph.node_vectors, N_CLASSES, "glove"),
                     source="text:glove")
    for steps in (0, 1):
        model = make_model("joint_gcn", route_steps=steps, epochs=0)
        model.fit(problem.train, problem.seen, text, seed=0)
        vectors = smoothed_class_vectors("joint_gcn", text, steps, 3)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        classes = model.seen_classifiers[1]
        np.testing.assert_allclose(model.route[1], unit[classes], rtol=1e-5)  # the image side mixes these
        rank, weight = model.net.basis.shape[0], model.hparams["semantic_weight"]
        np.testing.assert_allclose(model.class_embeddings(text)[:, rank:], np.sqrt(weight) * unit, rtol=1e-5, atol=1e-6)
    assert not np.allclose(vectors, text.vectors)  # one step moved them
    with pytest.raises(PipelineError, match="^joint_gcn: route_steps: -1 is not a whole number >= 0"):
        make_model("joint_gcn", route_steps=-1)


def test_kept_results_follow_the_content_of_their_arrays():
    calls = []

    @by_content(2)
    def total(x: np.ndarray, scale: float) -> np.ndarray:
        calls.append(1)
        return x.sum(axis=0) * scale

    x = np.ones((3, 2))
    first = total(x, 2.0)
    assert total(x.copy(), 2.0) is first and len(calls) == 1  # equal content: the kept result
    with pytest.raises(ValueError):
        first[0] = 0.0  # shared, so read-only
    x[0, 0] = 5.0  # changed in place: computed again
    np.testing.assert_array_equal(total(x, 2.0), [14.0, 6.0])
    total(x, 3.0)
    total(np.zeros((3, 2)), 2.0)  # a third distinct call drops the oldest kept one
    assert len(calls) == 4
    total(np.ones((3, 2)), 2.0)
    assert len(calls) == 5


def test_kept_results_of_objects_follow_the_content_they_name():
    calls = []

    class Box:
        def __init__(self, x: np.ndarray):
            self.x = x

    @by_content(2, lambda box, scale: (box.x, scale))
    def total(box: Box, scale: float) -> float:
        calls.append(1)
        return float(box.x.sum() * scale)

    box = Box(np.ones(3))
    assert total(box, 2.0) == total(Box(np.ones(3)), 2.0) == 6.0 and len(calls) == 1  # another object, same content
    box.x[0] = 2.0
    assert total(box, 2.0) == 8.0 and len(calls) == 2


def test_gcn_fits_from_one_seed_share_one_first_layer_output(problem):
    """Selection fits every grid point from the same seeded first layer: its output is computed once."""
    first, second, reseeded = (make_model("gcn_regression", ridge=r) for r in (0.1, 1.0, 0.1))
    for model, seed in ((first, 0), (second, 0), (reseeded, 1)):
        model.fit(problem.train, problem.seen, problem.semantics, seed=seed)
    g = _GraphInputs("gcn_regression", problem.semantics, first.hparams, torch.device("cpu"))
    kept = class_hidden(first.net.gcn, g)
    assert class_hidden(second.net.gcn, g) is kept and class_hidden(reseeded.net.gcn, g) is not kept
    with torch.no_grad():
        torch.testing.assert_close(kept, first.net.gcn.eval().hidden(g.nodes, g.propagation))
    assert not np.allclose(first.class_embeddings(problem.semantics), second.class_embeddings(problem.semantics))


def test_conse_mixes_the_vectors_of_the_top_seen_classes_by_probability(problem):
    rng = np.random.default_rng(2)
    d = problem.train.features.shape[1]
    rows = np.full((N_CLASSES, d + 1), np.nan, np.float32)
    rows[problem.seen] = rng.normal(size=(N_SEEN, d + 1))
    semantics = Semantics(problem.semantics.vectors, classifiers=rows)
    model = make_model("conse", top=3)
    assert model.fit(problem.train, problem.seen, semantics, seed=0)["supervision"] == "head"
    x = problem.test.features[:2]
    logits = np.hstack([x, np.ones((2, 1))]) @ rows[problem.seen].T
    for i in range(2):
        top = np.argsort(-logits[i])[:3]
        p = np.exp(logits[i] - logits[i].max())
        p /= p.sum()  # the softmax over all seen classes; the top three weigh in proportion
        vectors = problem.semantics.vectors[problem.seen[top]]
        mix = (p[top, None] * vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).sum(0)
        np.testing.assert_allclose(model.image_embeddings(Split(x, problem.test.labels[:2]))[i],
                                   mix / np.linalg.norm(mix), rtol=1e-4, atol=1e-5)


def test_a_graph_for_other_classes_is_refused(problem):
    graph = hand_graph(problem.semantics)
    wrong = Semantics(problem.semantics.vectors, graph=Graph(graph.edges, graph.node_vectors, N_CLASSES - 1))
    with pytest.raises(PipelineError, match="class nodes"):
        make_model("joint_gcn", epochs=1).fit(problem.train, problem.seen, wrong, seed=0)


# --- CLIP models --------------------------------------------------------------------------------------------


def test_cfzsl_names_the_missing_clip_inputs(problem):
    no_clip = Split(problem.train.features, problem.train.labels)
    with pytest.raises(PipelineError, match="CLIP image features.*--backbone clip"):
        make_model("cfzsl").fit(no_clip, problem.seen, problem.semantics, seed=0)
    no_text = Semantics(problem.semantics.vectors, {"minilm": problem.semantics.text["clip"]})
    with pytest.raises(PipelineError, match="CLIP text.*semantics.text"):
        make_model("cfzsl").fit(problem.train, problem.seen, no_text, seed=0)


def test_clip_prompt_scores_are_cosines_of_clip_embeddings(problem):
    rng = np.random.default_rng(1)
    text = rng.normal(size=(N_CLASSES, 32)).astype(np.float32)
    semantics = Semantics(problem.semantics.vectors, {"clip": text})
    model = make_model("clip_prompt")
    assert model.fit(problem.train, problem.seen, semantics, seed=0)["loss"] == []
    images, classes = model.image_embeddings(problem.test), model.class_embeddings(semantics)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, atol=1e-5)
    clip = problem.test.extra["clip"]  # extra["clip"] wins over the 64-d features
    cosine = (clip @ text.T) / np.outer(np.linalg.norm(clip, axis=1), np.linalg.norm(text, axis=1))
    np.testing.assert_allclose(images @ classes.T, cosine, atol=1e-5)

    clip_backbone = Split(problem.test.extra["clip"], problem.test.labels)  # features from --backbone clip
    np.testing.assert_allclose(model.image_embeddings(clip_backbone), images)


def test_clip_prompt_refuses_mismatched_or_missing_inputs(problem):
    semantics = Semantics(problem.semantics.vectors, {"clip": np.ones((N_CLASSES, 32), np.float32)})
    cnn_only = Split(problem.train.features, problem.train.labels)  # 64-d CNN features
    with pytest.raises(PipelineError, match="64.*32.*--backbone clip"):
        make_model("clip_prompt").fit(cnn_only, problem.seen, semantics, seed=0)
    with pytest.raises(PipelineError, match="CLIP text"):
        make_model("clip_prompt").fit(problem.train, problem.seen, Semantics(problem.semantics.vectors), seed=0)


@pytest.mark.parametrize("name, hparams", [("cfzsl", {"epochs": 3}), ("joint_gcn", {"epochs": 3})])
def test_training_shows_a_progress_bar_with_the_loss(problem, capfd, name, hparams):
    make_model(name, **hparams).fit(problem.train, problem.seen, problem.semantics, seed=0)
    err = capfd.readouterr().err
    assert f"{name}:" in err and "/3 [" in err and "epoch" in err and "loss=" in err, err
