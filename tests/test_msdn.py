"""MSDN on a small real feature store with grid features: sub-network shapes, attention
normalisation, the distillation and calibration losses, unseen-class accuracy, determinism, the
state round trip, input errors, and training that streams a grid file far larger than its memory."""
from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F
from conftest import write_toy_store

from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.grid import GridSource
from pipeline.models import MODELS, make_model
from pipeline.models.base import Semantics, Split
from pipeline.models.msdn import MSDN, calibration_loss, distillation_loss
from pipeline.models.streaming import epoch_draws
from pipeline.store import create_store

C, A, R, D, E, PER_CLASS = 12, 10, 16, 32, 8, 30
SEEN, UNSEEN = np.arange(9), np.arange(9, 12)
FAST = {"epochs": 15, "lr": 3e-3, "batch_size": 32, "device": "cpu"}


def _dataset(n: int, labels: np.ndarray, n_classes: int) -> ImageDataset:
    return ImageDataset("toy", Path("/nowhere"), [f"c{labels[i]}/{i}.jpg" for i in range(n)], labels,
                        [f"c{i}" for i in range(n_classes)], {"trainval": np.arange(n)})


class Problem:
    """12 classes with distinct binary attributes [12, 10]; each image's 16 regions of 32 dims are noise
    plus, for every attribute of its class, that attribute's pattern in one random region."""

    def __init__(self, root: Path, seed: int = 0, noise: float = 0.5):
        rng = np.random.default_rng(seed)
        while True:
            attributes = (rng.random((C, A)) < 0.4).astype(np.float32)
            if (len(np.unique(attributes, axis=0)) == C and attributes.sum(1).min() >= 2
                    and attributes[SEEN].sum(0).min() >= 1):
                break
        patterns = rng.normal(size=(A, D)).astype(np.float32) * 1.5
        labels = np.repeat(np.arange(C), PER_CLASS)
        grid = noise * rng.normal(size=(len(labels), R, D)).astype(np.float32)
        self.where = np.full((len(labels), A), -1)  # region holding each present attribute's pattern
        for i, c in enumerate(labels):
            present = np.flatnonzero(attributes[c])
            self.where[i, present] = rng.choice(R, len(present), replace=False)
            grid[i, self.where[i, present]] += patterns[present]
        pooled = grid.mean(axis=1)
        self.path = write_toy_store(root / "grid.h5", labels, C, pooled=pooled, grid=grid)
        data = Split(pooled, labels, grid=GridSource(self.path, np.arange(len(labels))))
        self.grid = grid
        self.train = data.subset(np.flatnonzero(labels < len(SEEN)))
        self.test = data.subset(np.flatnonzero(labels >= len(SEEN)))
        self.semantics = Semantics(attributes, attribute_vectors=rng.normal(size=(A, E)).astype(np.float32))

    def czsl_accuracy(self, model) -> float:
        """Per-class top-1 accuracy on the unseen images, candidates = unseen classes only."""
        scores = model.image_embeddings(self.test) @ model.class_embeddings(self.semantics)[UNSEEN].T
        predicted = UNSEEN[scores.argmax(axis=1)]
        return float(np.mean([np.mean(predicted[self.test.labels == c] == c) for c in UNSEEN]))


@pytest.fixture(scope="module")
def problem(tmp_path_factory) -> Problem:
    return Problem(tmp_path_factory.mktemp("msdn"))


@pytest.fixture(scope="module")
def fitted(problem) -> tuple[MSDN, dict]:
    model = make_model("msdn", **FAST)
    return model, model.fit(problem.train, SEEN, problem.semantics, seed=0)


def test_defaults_are_the_official_recipes():
    assert MODELS["msdn"] is MSDN and MSDN.search_space == {}
    cub, sun = make_model("msdn").hparams, make_model("msdn", recipe="sun", epochs=3).hparams
    assert (cub["lr"], cub["weight_decay"], cub["batch_size"]) == (1e-4, 1e-4, 50)
    assert (cub["calibration_weight"], cub["distill_weight"], cub["combine"], cub["momentum"], cub["epochs"]) == (
        0.1, 1e-3, 0.9, 0.9, 30)
    assert (sun["calibration_weight"], sun["distill_weight"], sun["combine"], sun["epochs"]) == (1e-4, 1e-2, 0.7, 3)
    assert make_model("msdn", recipe="awa2").hparams["normalize_attribute_vectors"] is True
    with pytest.raises(PipelineError, match="recipe 'apy' unknown"):
        make_model("msdn", recipe="apy")


def test_subnetwork_shapes_and_attention_sums_to_one(problem, fitted):
    model, _ = fitted
    out = model.attention(problem.grid[:5])
    assert out["alpha"].shape == (5, A, R) and out["gamma"].shape == (5, R, A)
    assert out["psi"].shape == (5, A) and out["phi"].shape == (5, A)
    np.testing.assert_allclose(out["alpha"].sum(axis=2), 1.0, atol=1e-5)  # AVA: over regions
    np.testing.assert_allclose(out["gamma"].sum(axis=2), 1.0, atol=1e-5)  # VAA: over attributes
    assert (out["alpha"] >= 0).all() and (out["gamma"] >= 0).all()
    emb = model.image_embeddings(problem.test)
    assert emb.shape == (len(problem.test), A) and emb.dtype == np.float32
    w = model.hparams["combine"]
    np.testing.assert_allclose(model.image_embeddings(problem.train.subset(np.arange(5))),
                               w * out["psi"] + (1 - w) * out["phi"], rtol=1e-4, atol=1e-4)
    classes = model.class_embeddings(problem.semantics)
    assert classes.shape == (C, A)
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, rtol=1e-5)


def test_attention_localises_attribute_patterns(problem, fitted):
    """AVA's attention of a present attribute peaks on the region holding its pattern far more often than
    chance (1/R), on unseen-class images."""
    model, _ = fitted
    rows = np.flatnonzero(problem.test.labels >= 0) + len(problem.train)
    alpha = model.attention(problem.grid[rows])["alpha"]  # [N, A, R]
    where = problem.where[rows]
    present = where >= 0
    hit = (alpha.argmax(axis=2) == where)[present].mean()
    assert hit > 4.0 / R, f"AVA attention found the attribute's region in {hit:.2f} of cases"


def test_distillation_is_weighted_l1_plus_jensen_shannon_as_published():
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, -1.0]])
    # weighted L1: w = (a - b)^2 / ||a - b|| = [4, 1, 0] / sqrt(5); sum w |a - b| = (4 * 2 + 1 * 1) / sqrt(5)
    l1 = 9 / np.sqrt(5)
    p, q = np.exp([2.0, 0.0, -1.0]), np.exp([0.0, 1.0, -1.0])
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    jsd = 0.5 * (np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m)))
    assert distillation_loss(a, b).item() == pytest.approx(l1 + jsd, rel=1e-5)
    assert distillation_loss(a, a).item() == pytest.approx(0.0, abs=1e-5)
    assert distillation_loss(b, a).item() == pytest.approx(l1 + jsd, rel=1e-5)  # symmetric
    shifted = distillation_loss(a, a + 3.0).item()  # same posteriors, raw scores 3 apart: the L1 term sees it
    assert shifted == pytest.approx(3 * (9 / np.sqrt(27)) * 3, rel=1e-5)  # w = 9 / sqrt(27) per class


def test_calibration_is_minus_log_of_the_batch_mean_unseen_mass():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0 + 1e-30], [0.1, 0.1, 0.4, 0.4]]))
    # unseen classes 2, 3: masses 0.1 and 0.8; official -log(mean) = -log(0.45), not mean(-log)
    assert calibration_loss(logits, torch.tensor([2, 3])).item() == pytest.approx(-np.log(0.45), rel=1e-5)
    assert calibration_loss(logits, torch.tensor([], dtype=torch.int64)).item() == 0.0


def test_forward_normalises_regions_and_sums_the_visual_to_attribute_scores():
    model = make_model("msdn", device="cpu")
    net = model.build([D, A, E])
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for w in (net.attribute_vectors, net.w1, net.w2, net.w3, net.w4):
            w.copy_(torch.as_tensor(rng.normal(size=w.shape), dtype=torch.float32))
    grid = torch.as_tensor(rng.normal(size=(2, R, D)) * rng.uniform(1, 60, size=(2, R, 1)), dtype=torch.float32)
    out = net(grid)
    f = grid / grid.norm(dim=-1, keepdim=True)  # normalize_F: each region unit length
    v = net.attribute_vectors
    scores, attention = v @ net.w1 @ f.transpose(1, 2), torch.softmax(v @ net.w2 @ f.transpose(1, 2), dim=-1)
    torch.testing.assert_close(out["psi"], (attention * scores).sum(-1), rtol=1e-4, atol=1e-4)
    region_scores, gamma = f @ net.w3 @ v.T, torch.softmax((v @ net.w4 @ f.transpose(1, 2)).transpose(1, 2), dim=-1)
    torch.testing.assert_close(out["phi"], (gamma * region_scores).sum(1), rtol=1e-4, atol=1e-4)  # a sum, not a max
    torch.testing.assert_close(net(grid * 7.0)["psi"], out["psi"], rtol=1e-4, atol=1e-4)  # scale-free regions


def test_cross_entropy_runs_over_all_classes():
    model = make_model("msdn", calibration_weight=0.0, distill_weight=0.0, device="cpu")
    classes = torch.eye(4, 3) + 0.1
    psi, phi = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    labels = torch.tensor([1])
    bias = torch.tensor([-1.0, -1.0, -1.0, 1.0])
    expected = sum(F.cross_entropy(s @ classes.T, labels) for s in (psi, phi))  # 4 classes, unseen 3 included
    assert model.loss(psi, phi, labels, classes, torch.tensor([3]), bias).item() == pytest.approx(expected.item())


def test_calibration_and_distillation_read_the_official_is_bias_margin():
    """As the official is_bias: +1 on unseen, −1 on seen logits for the self-calibration and the
    distillation's Jensen–Shannon term; the cross-entropy reads the logits without it."""
    classes = torch.eye(4, 3) + 0.1
    psi, phi = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    labels, unseen, bias = torch.tensor([1]), torch.tensor([3]), torch.tensor([-1.0, -1.0, -1.0, 1.0])
    logits = [s @ classes.T for s in (psi, phi)]
    ce = sum(F.cross_entropy(z, labels) for z in logits)
    calibrated = make_model("msdn", calibration_weight=0.5, distill_weight=0.0, device="cpu")
    expected = ce + 0.5 * sum(calibration_loss(z + bias, unseen) for z in logits)
    assert calibrated.loss(psi, phi, labels, classes, unseen, bias).item() == pytest.approx(expected.item())
    distilled = make_model("msdn", calibration_weight=0.0, distill_weight=0.3, device="cpu")
    expected = ce + 0.3 * distillation_loss(logits[0] + bias, logits[1] + bias)
    assert distilled.loss(psi, phi, labels, classes, unseen, bias).item() == pytest.approx(expected.item())
    assert distillation_loss(logits[0] + bias, logits[1] + bias) != pytest.approx(distillation_loss(*logits).item())


def test_batches_are_drawn_from_the_whole_training_set_and_read_as_stored(problem):
    """A class-ordered store (every class's images together): a uniform epoch covers each image once
    and its batches mix classes as random draws do (CUB: ~43 classes in 50 images); balanced batches
    (AWA2, SUN) take distinct classes; every batch's grid is its own rows of the store."""
    labels = problem.train.labels
    rng = np.random.default_rng(0)
    epoch = epoch_draws(labels, 32, rng, "uniform")
    assert len(epoch) == -(-len(labels) // 32)
    np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(len(labels)))
    assert np.mean([len(np.unique(labels[b])) for b in epoch[:-1]]) > 8.5  # 9 classes: a block read gives ~1-2
    balanced = epoch_draws(labels, 6, rng, "balanced")
    assert all(len(b) == 6 and len(np.unique(labels[b])) == 6 for b in balanced)
    few = epoch_draws(labels, 20, rng, "balanced")  # 9 classes, 20 // 9 = 2 images each
    assert all(len(b) == 18 and np.bincount(labels[b]).max() == 2 for b in few)
    grid = problem.train.grid
    for positions, block in grid.draws(epoch[:3] + [np.array([5, 5, 0])]):
        np.testing.assert_allclose(block, problem.grid[grid.rows[positions]], atol=1e-2)  # float16 store
    with pytest.raises(PipelineError, match="sampling 'shuffled' unknown"):
        make_model("msdn", sampling="shuffled")
    with pytest.raises(PipelineError, match="multi-label"):
        epoch_draws(np.full(10, -1), 4, rng, "balanced")


def test_recipes_set_sampling_and_awa2_clamps_negative_attributes():
    assert make_model("msdn").hparams["sampling"] == "uniform"
    awa2 = make_model("msdn", recipe="awa2")
    assert awa2.hparams["sampling"] == "balanced" and awa2.hparams["nonnegative_attributes"] is True
    vectors = np.array([[3.0, -4.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(awa2._classes(Semantics(vectors)), [[1, 0, 0], [0.70710677, 0.70710677, 0]])
    np.testing.assert_allclose(make_model("msdn")._classes(Semantics(vectors))[0], [0.6, -0.8, 0])


def test_training_reaches_unseen_accuracy_well_above_chance(problem, fitted):
    model, log = fitted
    assert len(log["loss"]) == FAST["epochs"] and log["loss"][-1] < log["loss"][0]
    accuracy = problem.czsl_accuracy(model)
    assert accuracy >= 1.6 / len(UNSEEN), f"unseen CZSL accuracy {accuracy:.2f}"


def test_same_seed_same_embeddings_and_state_round_trip(problem, fitted):
    model, _ = fitted
    again = make_model("msdn", **FAST)
    again.fit(problem.train, SEEN, problem.semantics, seed=0)
    first = model.image_embeddings(problem.test)
    np.testing.assert_array_equal(again.image_embeddings(problem.test), first)

    buffer = io.BytesIO()
    torch.save(model.state(), buffer)
    buffer.seek(0)
    restored = make_model("msdn", **FAST)
    restored.load_state(torch.load(buffer))
    np.testing.assert_array_equal(restored.image_embeddings(problem.test), first)
    np.testing.assert_array_equal(restored.class_embeddings(problem.semantics),
                                  model.class_embeddings(problem.semantics))


def test_input_errors(problem):
    no_names = Semantics(problem.semantics.vectors)
    with pytest.raises(PipelineError, match="MSDN needs attribute-name embeddings"):
        make_model("msdn", **FAST).fit(problem.train, SEEN, no_names, seed=0)
    wrong = Semantics(problem.semantics.vectors, attribute_vectors=np.ones((A + 1, E), np.float32))
    with pytest.raises(PipelineError, match="attribute-name vectors"):
        make_model("msdn", **FAST).fit(problem.train, SEEN, wrong, seed=0)
    no_grid = Split(problem.train.features, problem.train.labels)
    with pytest.raises(PipelineError, match="--grid"):
        make_model("msdn", **FAST).fit(no_grid, SEEN, problem.semantics, seed=0)
    with pytest.raises(PipelineError, match="not trained"):
        make_model("msdn").image_embeddings(problem.test)


def test_one_epoch_streams_a_grid_file_far_larger_than_its_memory(tmp_path: Path):
    """~300 MB of float16 grid rows (allocated, not written: the store's chunks are allocated
    up front, so the file is full size); one training epoch must peak far below the file size."""
    n, regions, dim = 75_000, 16, 128  # 4 KiB a row as float16: 307 MB
    labels = (np.arange(n) % 3).astype(np.int64)
    path = tmp_path / "big.h5"
    create_store(path, _dataset(n, labels, 4), 4, "float16", (regions, dim), {})
    file_bytes = n * regions * dim * 2
    assert path.stat().st_size >= file_bytes
    train = Split(np.zeros((n, 4), np.float32), labels, grid=GridSource(path, np.arange(n)))
    semantics = Semantics(np.eye(4, 3, dtype=np.float32) + 0.1,
                          attribute_vectors=np.random.default_rng(0).normal(size=(3, E)).astype(np.float32))
    model = make_model("msdn", epochs=1, batch_size=512, device="cpu")
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    log = model.fit(train, np.arange(3), semantics, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = process.memory_info().rss - rss_before
    assert len(log["loss"]) == 1 and np.isfinite(log["loss"][0])
    assert peak < file_bytes / 5, f"numpy allocations peaked at {peak / 1e6:.0f} MB, file {file_bytes / 1e6:.0f} MB"
    print(f"tracemalloc peak {peak / 1e6:.0f} MB, RSS growth {rss_growth / 1e6:.0f} MB, file {file_bytes / 1e6:.0f} MB")
    assert rss_growth < file_bytes / 3, f"RSS grew by {rss_growth / 1e6:.0f} MB for a {file_bytes / 1e6:.0f} MB file"
