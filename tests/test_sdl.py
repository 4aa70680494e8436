"""SDL and the multi-label pipeline: tag store, loss by hand, max-over-vectors search, training on
the synthetic multi-label data (unseen tags far above a random ranking), validation-only selection."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli import cli
from pipeline.backbones import load_backbone
from pipeline.datasets.synthetic import generate_synthetic, load_synthetic
from pipeline.errors import PipelineError
from pipeline.extract import extract
from pipeline.inputs import Inputs, load_inputs
from pipeline.models.base import Semantics, Split, seen_tags
from pipeline.models.sdl import SDL, diversity, sdl_loss
from pipeline.multilabel import tag_validation_split
from pipeline.scoring import scores, search
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.store import FeatureStore
from pipeline.train import TrainConfig, train

FAST = {"epochs": 8, "k": 3}


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Pooled + grid features (pretrained EfficientNet-Lite0) and semantics of small multi-label data."""
    tmp = tmp_path_factory.mktemp("multilabel")
    generate_synthetic(tmp / "data", images_per_class=8, image_size=64, seed=0, multilabel=True)
    features, semantics = tmp / "features.h5", tmp / "semantics.h5"
    extract(load_synthetic(tmp / "data"), load_backbone("efficientnet_lite0", "imagenet", 128), features,
            workers=0, batch_size=64, grid=True)
    build_semantics(features, semantics, SemanticsConfig(attributes="synthetic", data_root=str(tmp / "data")))
    return features, semantics, tmp / "data"


def test_synthetic_multilabel_data_and_its_store(cached):
    features, _, root = cached
    ds = load_synthetic(root)
    assert ds.multilabel and set(ds.splits) == {"trainval", "test"}
    assert (ds.labels == -1).all() and 1 <= ds.tags.sum(axis=1).min() and ds.tags.sum(axis=1).max() <= 3
    assert not ds.tags[ds.splits["trainval"]][:, ds.unseen_tags].any()  # training images: seen objects only
    assert ds.tags[ds.splits["test"]][:, ds.unseen_tags].any(axis=1).mean() > 0.5
    with FeatureStore(features) as store:
        np.testing.assert_array_equal(store.tags, ds.tags)
        np.testing.assert_array_equal(store.unseen_tags, ds.unseen_tags)
        assert "12 unseen" in store.describe()


def test_sdl_loss_by_hand():
    # one image, K=2 vectors, three tags: scores are maxima over the two vectors
    principal = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    tags = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # max scores 1, 2, 2
    targets = torch.tensor([[True, False, False]])
    rank = F.softplus(torch.tensor(2.0 - 1.0)) * 2  # negatives tags 1 and 2, one positive
    assert sdl_loss(principal, tags, targets, None, 0.0) == pytest.approx(rank.item(), rel=1e-6)
    weighted = sdl_loss(principal, tags, targets, torch.tensor([0.5]), 0.0)
    assert weighted == pytest.approx(1.5 * rank.item(), rel=1e-6)
    spread = principal.var(dim=1).sum()  # variance over the K vectors, summed over dimensions
    full = sdl_loss(principal, tags, targets, None, 0.3)
    assert full == pytest.approx(2 * (0.7 * rank.item() + 0.3 * spread.item()), rel=1e-6)
    no_positive = torch.tensor([[False, False, False]])
    both = sdl_loss(principal.repeat(2, 1, 1), tags, torch.cat([targets, no_positive]), None, 0.0)
    assert both == pytest.approx(rank.item())  # images without a positive tag are skipped


def test_diversity_is_the_summed_variance_of_the_positive_tag_vectors():
    vectors = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], np.float32)
    targets = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
    expected = [np.var(vectors[[0, 1]], axis=0, ddof=1).sum(), np.var(vectors, axis=0, ddof=1).sum(), 0.0]
    np.testing.assert_allclose(diversity(targets, vectors, block=2), expected, rtol=1e-6)


def test_seen_tags_hides_every_other_tag():
    tags = np.array([[1, 0, 1], [0, 1, 1]], bool)
    split = Split(np.zeros((2, 4), np.float32), np.full(2, -1), tags=tags)
    sem = Semantics(np.eye(3, dtype=np.float32))
    _, targets = seen_tags("sdl", split, np.array([0, 1]), sem)
    np.testing.assert_array_equal(targets, tags[:, :2])


@pytest.mark.parametrize("backend", ["numpy", "torch", "faiss"])
def test_search_over_principal_vectors_equals_brute_force(backend):
    rng = np.random.default_rng(0)
    queries = np.round(rng.normal(size=(40, 4, 8)) * 2).astype(np.float32)  # rounded: many ties
    classes = np.round(rng.normal(size=(30, 8))).astype(np.float32)
    brute = (queries @ classes.T).max(axis=1)
    np.testing.assert_allclose(scores(queries, classes), brute, rtol=1e-6)
    candidates = np.arange(0, 30, 2)
    s, i = search(queries, classes, 5, candidates=candidates, backend=backend)
    expected = candidates[np.argsort(-brute[:, candidates], axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(i, expected)
    np.testing.assert_allclose(s, np.take_along_axis(brute, expected, 1), rtol=1e-6)
    s, i = search(queries, classes, 20, candidates=candidates[:3], backend=backend)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()


def _poison_test(inputs: Inputs) -> Inputs:
    test = inputs.splits["test"]
    rng = np.random.default_rng(0)
    poisoned = Split(np.full_like(test.features, np.nan), test.labels, tags=rng.permutation(test.tags))
    return dataclasses.replace(inputs, splits={**inputs.splits, "test": poisoned})


def test_sdl_ranks_unseen_tags_far_above_random_and_selects_on_validation_only(cached):
    features, semantics, _ = cached
    inputs = load_inputs(features, semantics)
    v = tag_validation_split(inputs, 0.2, 0)
    assert not set(v.val_tags) & set(inputs.unseen_tags) and not set(v.val_tags) & set(v.train_tags)
    cfg = TrainConfig(model="sdl", hparams={"epochs": 8}, select=True)
    checkpoint = train(inputs, cfg)
    table = [(row["hparams"], row["val_mAP"]) for row in checkpoint["validation"]["table"]]
    assert [(h["k"], h["reg_weight"]) for h, _ in table] == [(3, 0.01), (3, 0.3), (7, 0.01), (7, 0.3)]
    assert table == [(row["hparams"], row["val_mAP"]) for row in train(_poison_test(inputs), cfg)["validation"]["table"]]

    from pipeline.evaluate import evaluate
    from pipeline.models import make_model

    model = make_model("sdl", **checkpoint["hparams"])
    model.load_state(checkpoint["state"])
    n_dims = inputs.semantics.vectors.shape[1]
    assert model.image_embeddings(inputs.splits["test"]).shape[1:] == (checkpoint["hparams"]["k"], n_dims)
    metrics = evaluate(model, checkpoint, inputs, features.parent / "plots")
    zsl = metrics["zsl"]
    assert zsl["tags"] == 12 and zsl["mAP"] > 2.5 * zsl["mAP_random"], zsl  # pooled head: 0.35 vs 0.12
    gzsl = metrics["gzsl"]
    assert gzsl["tags"] + gzsl["tags_without_positives"] == 48 and gzsl["mAP"] > 2 * gzsl["mAP_random"]  # 0.20 vs 0.08
    assert {"P@3", "R@3", "F1@3", "F1@5"} <= set(zsl)
    rows = json.loads((features.parent / "plots" / "f1_at_k.json").read_text())  # a line per setting in dvc plots
    assert [r["k"] for r in rows] == list(range(1, 11)) and rows[2]["zsl_F1"] == zsl["F1@3"] and "gzsl_P" in rows[0]


def test_diversity_weighting_is_a_one_parameter_ablation(cached):
    features, semantics, _ = cached
    inputs = load_inputs(features, semantics)
    states = []
    for weighting in (True, False):
        model = SDL(**FAST, input="pooled", diversity_weighting=weighting)
        log = model.fit(inputs.splits["trainval"], np.setdiff1d(np.arange(48), inputs.unseen_tags),
                        inputs.semantics, 0)
        states.append((model.state(), log["loss"][-1]))
    (weighted, loss_w), (plain, loss_p) = states
    assert loss_w > loss_p  # weights 1 + d_i >= 1 scale the ranking loss up
    assert any(not torch.equal(weighted[key], plain[key]) for key in weighted if key.startswith("net."))


def test_single_label_models_refuse_multilabel_data(cached):
    features, semantics, _ = cached
    with pytest.raises(PipelineError, match="use model: sdl"):
        train(load_inputs(features, semantics), TrainConfig(model="eszsl"))


def test_cli_train_and_evaluate_write_tag_metrics(cached, tmp_path):
    features, semantics, _ = cached
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--model", "sdl", "--features", str(features), "--semantics", str(semantics),
                                 "--no-select", "--hparam", "epochs=4", "--hparam", "input=pooled",
                                 "--output", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    assert "validation-tag mAP" in result.output
    result = runner.invoke(cli, ["evaluate", "--model-file", str(tmp_path / "m.pt"), "--features", str(features),
                                 "--semantics", str(semantics), "--metrics", str(tmp_path / "metrics.json"),
                                 "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"run", "model", "zsl", "gzsl"}
    assert (tmp_path / "plots" / "figures" / "f1_at_k.png").is_file() and json.loads(
        (tmp_path / "plots" / "seen_unseen.json").read_text()) == []  # no seen-unseen curve on tags
    assert metrics["run"]["model"] == "sdl" and "epochs=4" in metrics["run"]["hparams"]
    assert result.output.strip().splitlines()[-1].startswith(f"sdl: ZSL mAP {metrics['zsl']['mAP']:.3f}, F1@3")


def test_official_recipe_and_grid_head_train(cached):
    """recipe official: Adam with L2 on weights only and a OneCycle schedule that ends annealed; the grid
    head (ours) streams the store's regions."""
    features, semantics, _ = cached
    inputs = load_inputs(features, semantics)
    seen = np.setdiff1d(np.arange(48), inputs.unseen_tags)
    model = SDL(recipe="official", epochs=2, input="grid", k=3)
    assert (model.hparams["lr"], model.hparams["batch_size"], model.hparams["weight_decay"]) == (2.5e-5, 32, 3e-4)
    net = model.build([inputs.splits["trainval"].features.shape[1], 1280, inputs.semantics.vectors.shape[1]])
    optimizer, schedule = model._optimizer(net, steps=100)
    decayed, rest = optimizer.param_groups
    assert decayed["weight_decay"] == 3e-4 and rest["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and any(p.ndim == 1 for p in rest["params"])
    for _ in range(99):  # the scheduler's 100th learning rate is its last
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] < 1e-8  # annealed to ~lr / 1e4 by the end
    log = model.fit(inputs.splits["trainval"], seen, inputs.semantics, 0)
    assert len(log["loss"]) == 2 and np.isfinite(log["loss"]).all()
    assert model.image_embeddings(inputs.splits["test"]).shape[1] == 3
