"""DRMN on a small real grid feature store: shapes, attention normalisation, multi-level fusion,
learning, ablations, state."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_toy_store

from pipeline.errors import PipelineError
from pipeline.grid import GridSource
from pipeline.models import make_model
from pipeline.models.base import Semantics, Split
from pipeline.models.drmn import DRMN, DRMNNet, LevelFusion

C, A, R, D, E, D_MID = 12, 10, 16, 32, 8, 12
UNSEEN = np.array([9, 10, 11])
SEEN = np.arange(9)
FAST = {"epochs": 12, "lr": 3e-3, "batch_size": 32, "hidden": 32, "heads": 2, "layers": 1, "dropout": 0.0,
        "scale": 10.0, "device": "cpu"}


def _attributes(rng: np.random.Generator) -> np.ndarray:
    """Distinct binary class attribute vectors, 3..6 attributes on per class."""
    rows: list[np.ndarray] = []
    while len(rows) < C:
        row = (rng.random(A) < 0.45).astype(np.float32)
        if 3 <= row.sum() <= 6 and not any(np.array_equal(row, r) for r in rows):
            rows.append(row)
    return np.stack(rows)


def _store(folder: Path, signal_in: str) -> dict:
    """A store with ``grid`` and ``grid_mid``; each image's attributes are drawn (each as its pattern,
    in one random region) into the stage ``signal_in`` ("grid" or "grid_mid"), the other is noise."""
    rng = np.random.default_rng(0)
    attrs = _attributes(rng)
    per_train, per_test = 30, 20
    labels = np.concatenate([np.repeat(SEEN, per_train), np.repeat(UNSEEN, per_test)])
    n = len(labels)
    stages = {"grid": rng.normal(0, 0.7, (n, R, D)).astype(np.float32),
              "grid_mid": rng.normal(0, 0.7, (n, R, D_MID)).astype(np.float32)}
    drawn = stages[signal_in]
    patterns = rng.normal(0, 1, (A, drawn.shape[2])).astype(np.float32) * 2.0
    for i, c in enumerate(labels):
        for a in np.flatnonzero(attrs[c]):
            drawn[i, rng.integers(R)] += patterns[a]
    pooled = stages["grid"].mean(axis=1)
    train_rows = np.arange(len(SEEN) * per_train)
    test_rows = np.arange(len(train_rows), n)
    path = write_toy_store(folder / "store.h5", labels, C, {"trainval": train_rows, "test_unseen": test_rows},
                           pooled, stages["grid"], stages["grid_mid"])

    def split(rows: np.ndarray) -> Split:
        return Split(pooled[rows], labels[rows], grid=GridSource(path, rows))

    semantics = Semantics(vectors=attrs, attribute_vectors=rng.normal(0, 1, (A, E)).astype(np.float32))
    return {"train": split(train_rows), "test": split(test_rows), "semantics": semantics}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _store(tmp_path_factory.mktemp("drmn"), signal_in="grid")


def _fit(data: dict, seed: int = 0, **hp) -> DRMN:
    model = make_model("drmn", **{**FAST, **hp})
    model.fit(data["train"], SEEN, data["semantics"], seed)
    return model  # type: ignore[return-value]


def _unseen_accuracy(model: DRMN, data: dict) -> float:
    scores = model.image_embeddings(data["test"]) @ model.class_embeddings(data["semantics"])[UNSEEN].T
    return float((UNSEEN[scores.argmax(1)] == data["test"].labels).mean())


@pytest.fixture(scope="module")
def trained(data: dict) -> DRMN:
    return _fit(data)


def test_shapes_and_attention(trained: DRMN, data: dict):
    net: DRMNNet = trained.trained()  # type: ignore[assignment]
    grid = torch.randn(5, R, D_MID + D)  # both stages, joined along channels
    features, attention = net.attend(grid)
    assert features.shape == (5, A, D) and attention.shape == (5, A, R)
    torch.testing.assert_close(attention.sum(-1), torch.ones(5, A))
    gates = net.channel_weights()
    assert gates.shape == (A, D) and (gates > 0).all() and (gates < 1).all()
    assert net.interact(features).shape == (5, A)
    assert net.attribute_branch(grid).shape == (5, A)
    assert net.global_branch(torch.randn(5, D)).shape == (5, A)
    emb = trained.image_embeddings(data["test"])
    assert emb.shape == (len(data["test"]), A) and emb.dtype == np.float32
    assert trained.class_embeddings(data["semantics"]).shape == (C, A)


def test_level_fusion():
    fusion = LevelFusion((D_MID, D))
    early, last = torch.randn(3, R, D_MID), torch.randn(3, R, D)
    joined = torch.cat([early, last], dim=-1)
    torch.testing.assert_close(fusion(joined), (fusion.project[0](early) + last) / 2)  # equal weights at init
    assert LevelFusion((D,))(last) is last


def test_fuses_the_earlier_stage_when_the_store_has_it(trained: DRMN, tmp_path: Path):
    net: DRMNNet = trained.trained()  # type: ignore[assignment]
    assert trained.sizes[4:] == [D_MID] and net.fusion.level_dims == (D_MID, D)
    assert not torch.equal(net.fusion.logits.detach(), torch.zeros(2))  # the mix was learnt
    early = _store(tmp_path, signal_in="grid_mid")  # the attributes show in the earlier stage only
    fused, single = _fit(early, global_weight=0.0), _fit(early, global_weight=0.0, multi_level=False)
    assert single.sizes[4:] == [] and single.trained().fusion.level_dims == (D,)
    with_mid, without = _unseen_accuracy(fused, early), _unseen_accuracy(single, early)
    assert with_mid > without + 0.2 and without < 0.5, (with_mid, without)  # chance: 1/3


def test_learns_unseen_classes(trained: DRMN, data: dict):
    accuracy = _unseen_accuracy(trained, data)  # default mix of the two branches
    assert accuracy >= 2 / len(UNSEEN), accuracy  # at least twice chance
    trained.hparams["global_weight"] = 0.0  # the attribute (attention) branch alone learns too
    try:
        accuracy = _unseen_accuracy(trained, data)
    finally:
        trained.hparams["global_weight"] = DRMN.defaults["global_weight"]
    assert accuracy >= 2 / len(UNSEEN), accuracy


def test_global_weight_changes_output_without_retraining(trained: DRMN, data: dict):
    out = {}
    try:
        for w in (0.0, 0.3, 1.0):
            trained.hparams["global_weight"] = w
            out[w] = trained.image_embeddings(data["test"])
    finally:
        trained.hparams["global_weight"] = DRMN.defaults["global_weight"]
    assert not np.allclose(out[0.0], out[1.0]) and not np.allclose(out[0.0], out[0.3])
    np.testing.assert_allclose(out[0.3], 0.7 * out[0.0] + 0.3 * out[1.0], atol=1e-5)


@pytest.mark.parametrize("ablation", [{"channel_attention": False}, {"layers": 0}, {"attr_weight": 1.0},
                                      {"multi_level": False}])
def test_ablations_run_and_change_output(trained: DRMN, data: dict, ablation: dict):
    model = _fit(data, epochs=2, **ablation)
    base = _fit(data, epochs=2)
    a, b = model.image_embeddings(data["test"]), base.image_embeddings(data["test"])
    assert np.isfinite(a).all() and not np.allclose(a, b)


def test_ablation_no_channel_attention_gates_are_ones(data: dict):
    net: DRMNNet = _fit(data, epochs=1, channel_attention=False).trained()  # type: ignore[assignment]
    torch.testing.assert_close(net.channel_weights(), torch.ones(A, D))


def test_same_seed_same_embeddings(data: dict):
    a = _fit(data, seed=3, epochs=2).image_embeddings(data["test"])
    b = _fit(data, seed=3, epochs=2).image_embeddings(data["test"])
    np.testing.assert_array_equal(a, b)


def test_state_round_trip(trained: DRMN, data: dict):
    fresh = make_model("drmn", **FAST)
    fresh.load_state(trained.state())
    np.testing.assert_array_equal(fresh.image_embeddings(data["test"]), trained.image_embeddings(data["test"]))
    semantics = data["semantics"]
    np.testing.assert_array_equal(fresh.class_embeddings(semantics), trained.class_embeddings(semantics))


def test_needs_attribute_vectors(data: dict):
    semantics = Semantics(vectors=data["semantics"].vectors)
    with pytest.raises(PipelineError, match="set semantics.attribute_vectors"):
        make_model("drmn", **FAST).fit(data["train"], SEEN, semantics, 0)


def test_needs_grid(data: dict):
    train = Split(data["train"].features, data["train"].labels)
    with pytest.raises(PipelineError, match="--grid"):
        make_model("drmn", **FAST).fit(train, SEEN, data["semantics"], 0)


def test_model_fusing_grid_mid_refuses_a_store_without_it(trained: DRMN, data: dict, tmp_path: Path):
    test = data["test"]
    path = write_toy_store(tmp_path / "single_level.h5", test.labels, C, {"test_unseen": np.arange(len(test))},
                           test.features, np.zeros((len(test), R, D), np.float32), finish=False)
    other = Split(test.features, test.labels, grid=GridSource(path, np.arange(len(test))))
    with pytest.raises(PipelineError, match="lacks; extract with --grid --mid-grid"):
        trained.image_embeddings(other)


def test_hyperparameters():
    assert set(DRMN.search_space) <= set(DRMN.defaults) and "global_weight" in DRMN.search_space
    assert int(np.prod([len(v) for v in DRMN.search_space.values()])) <= 4
