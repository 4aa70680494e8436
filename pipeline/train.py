"""Train a zero-shot model on cached features, choosing hyperparameters and γ on validation only.

1. Validation: the dataset's class-disjoint ``train``/``val`` splits (or, when it has none,
   ``val_fraction`` of the trainval classes drawn with the seed), plus ``val_fraction`` of each
   train class's images held out as validation images of seen classes. Without the dataset's own
   split, ``val_folds`` such draws (seeds ``seed``, ``seed + 1``, ...) are averaged: the model's
   ``selection_folds`` by default, 5 for the closed-form models, whose selection then reads 5× the
   val classes instead of the noise of one small draw, 1 for networks trained by gradient.
2. Every combination of the model's ``search_space`` (minus fixed hyperparameters) is fitted on ``train``
   and scored by per-class accuracy on the ``val`` classes (candidates: val classes only, the only
   classes embedded); the best mean over the folds wins. Combinations that differ only in
   hyperparameters read when embedding (``ZSLModel.inference_hparams``) share one fit. A model that
   refines a closed form by gradient steps is validated through its closed form
   (``ZSLModel.stand_in``) and refined on the winner only. Seen classes without images (ImageNet's
   1000, known by their classifier rows) are train classes of every fold.
3. γ of calibrated stacking maximises the harmonic mean H of the winner's fold-0 model (the one
   validated: for a refined model its closed form) on the held-out seen images and the val images
   over train ∪ val classes. Refining on fold 0 too, only to calibrate γ, doubled ``joint_gcn``'s
   time for the same H (IN200, 3 seeds: 0.266 vs 0.268 with GloVe, 0.339 vs 0.342 with MiniLM).
4. The chosen hyperparameters are refitted on all of ``trainval``; the model, γ and the selection
   table are saved. No test split is read at any point.

Multi-label data (a store with tags) is trained by :func:`pipeline.multilabel.train_multilabel`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import io
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.inputs import Inputs, load_inputs, semantics_digest
from pipeline.metrics import BestScores, per_class_accuracy, select_gamma
from pipeline.models import make_model
from pipeline.models.base import Semantics, Split, ZSLModel
from pipeline.multilabel import train_multilabel
from pipeline.outputs import write_whole
from pipeline.scoring import search
from pipeline.selection import TrainConfig, choose, refit, untimed
from pipeline.store import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class Validation:
    """Validation data carved from trainval only."""

    train: Split  # fitted on
    seen_holdout: Split  # images of train classes not fitted on
    val: Split  # images of the val classes
    train_classes: np.ndarray
    val_classes: np.ndarray


def validation_split(inputs: Inputs, fraction: float, seed: int) -> Validation:
    """Class-disjoint train/val from trainval, and an image holdout of the train classes.

    Each train class with two images or more gives ``fraction`` of them (at least one) to the
    holdout. When no class has two (one image per class), the single image of ``fraction`` of the
    train classes is held out instead: those classes stay train classes, known to the models by
    their semantics (and classifier rows, when the store has them) but by no image.
    """
    rng = np.random.default_rng(seed)
    trainval = inputs.splits["trainval"]
    if "train" in inputs.splits and "val" in inputs.splits:
        train, val = inputs.splits["train"], inputs.splits["val"]
    else:
        classes = np.unique(trainval.labels)
        n_val = max(1, round(fraction * len(classes)))
        val_classes = rng.choice(classes, n_val, replace=False)
        in_val = np.isin(trainval.labels, val_classes)
        train, val = trainval.subset(np.flatnonzero(~in_val)), trainval.subset(np.flatnonzero(in_val))
    with_images = np.unique(train.labels)
    # seen classes without images (ImageNet's protocol) are train classes of every fold: known by their
    # semantics and classifier rows, never validated on
    train_classes = np.union1d(with_images, np.setdiff1d(inputs.seen, np.unique(val.labels)))
    holdout = np.zeros(len(train), bool)
    for c in with_images:
        rows = np.flatnonzero(train.labels == c)
        if len(rows) > 1:
            holdout[rng.choice(rows, max(1, round(fraction * len(rows))), replace=False)] = True
    if not holdout.any() and len(with_images) > 1:
        picked = rng.choice(with_images, max(1, round(fraction * len(with_images))), replace=False)
        holdout = np.isin(train.labels, picked)
        log.warning("one image per train class: held out the only image of %d of the %d train classes for "
                    "calibration; they are fitted without images", len(picked), len(with_images))
    log.info("validation: %d train classes (%d of them with images: %d fitted, %d held out), %d val classes "
             "(%d images)", len(train_classes), len(with_images), int((~holdout).sum()), int(holdout.sum()),
             len(np.unique(val.labels)), len(val))
    return Validation(train.subset(np.flatnonzero(~holdout)), train.subset(np.flatnonzero(holdout)), val,
                      train_classes, np.unique(val.labels))


def czsl_on(model: ZSLModel, data: Split, semantics: Semantics, candidates: np.ndarray) -> float:
    """Per-class mean top-1 accuracy of ``model`` on ``data`` with only ``candidates`` as classes (only
    their embeddings are computed)."""
    candidates = np.unique(candidates)  # sorted: ties go to the lower class index, as over all classes
    _, idx = search(model.image_embeddings(data), model.class_embeddings_of(semantics, candidates), 1)
    return per_class_accuracy(candidates[idx[:, 0]], data.labels)


def calibrate(model: ZSLModel, v: Validation, semantics: Semantics) -> tuple[float, float]:
    """γ of calibrated stacking maximising H on fold ``v``'s held-out seen images and val images over its
    train ∪ val classes (only their embeddings are computed), and that H."""
    held = v.seen_holdout.concat(v.val)
    classes = np.union1d(v.train_classes, v.val_classes)
    local = functools.partial(np.searchsorted, classes)  # class index -> row among ``classes``, order kept
    best = BestScores.search(model.image_embeddings(held), model.class_embeddings_of(semantics, classes),
                             local(v.train_classes), local(v.val_classes))
    return select_gamma(best, local(held.labels), local(v.train_classes), local(v.val_classes))


def fold_problem(v: Validation, semantics: Semantics) -> tuple[Split, np.ndarray, Semantics]:
    """Fold ``v`` as a problem of its own, for a model whose fit reads the classes outside the seen ones
    (``fits_unseen_classes``): only its train and val classes exist, renumbered in order, so the val
    classes are its unseen classes as the test classes are the final fit's, not the test classes besides
    (MSDN on CUB: 30 of 150 classes, as 50 of 200 in the final fit, instead of 80 of 200; its validation γ
    3.29 became 1.91, the test curve peaking at 1.95). Returns (train split, train classes, semantics)."""
    classes = np.union1d(v.train_classes, v.val_classes)
    local = functools.partial(np.searchsorted, classes)
    if semantics.graph is not None:
        raise PipelineError("a model reading a class graph cannot be fitted on a fold's classes alone")
    rows = Semantics(vectors=semantics.vectors[classes], text={k: t[classes] for k, t in semantics.text.items()},
                     attribute_vectors=semantics.attribute_vectors, source=semantics.source,
                     classifiers=None if semantics.classifiers is None else semantics.classifiers[classes])
    return dataclasses.replace(v.train, labels=local(v.train.labels)), local(v.train_classes), rows


def validation_folds(inputs: Inputs, cfg: TrainConfig) -> list[Validation]:
    """The validation folds of selection: the dataset's own train/val split, else ``cfg.folds()`` draws."""
    own = "train" in inputs.splits and "val" in inputs.splits
    folds = [validation_split(inputs, cfg.val_fraction, cfg.seed + k) for k in range(1 if own else cfg.folds())]
    for v in folds:
        if len(v.val) == 0 or len(v.seen_holdout) == 0:
            raise PipelineError("validation needs images of at least one val class and of held-out train images")
    return folds


def train(inputs: Inputs, cfg: TrainConfig) -> dict[str, Any]:
    """Select on validation, refit on trainval; returns the checkpoint dict (see :func:`save_checkpoint`)."""
    if inputs.multilabel:
        return train_multilabel(inputs, cfg)
    folds = validation_folds(inputs, cfg)
    inference = cfg.model_class.inference_hparams
    fitted: dict[tuple[int, str], ZSLModel] = {}  # (fold, the hyperparameters fit reads) -> the fitted model

    def fit_and_score(hparams: dict[str, Any], fold: int) -> tuple[float, ZSLModel]:
        v = folds[fold]
        stand_in = cfg.model_class(**hparams, device=cfg.device).stand_in()
        key = (fold, repr(sorted((k, value) for k, value in stand_in.items() if k not in inference)))
        if key not in fitted:  # combinations that differ in inference hyperparameters only follow each other
            for stale in [k for k in fitted if k[1] != key[1]]:
                del fitted[stale]
            model = cfg.model_class(**stand_in, device=cfg.device)
            problem = fold_problem(v, inputs.semantics) if model.fits_unseen_classes else (
                v.train, v.train_classes, inputs.semantics)
            fit_log = model.fit(*problem, cfg.seed)
            log.info("%s fold %d: fitted in %.1f s", cfg.model, fold, fit_log.get("seconds", 0.0))
            fitted[key] = model
        model = copy.copy(fitted[key])  # the same fit, read with this combination's inference hyperparameters
        model.hparams = {**model.hparams, **{k: stand_in[k] for k in inference}}
        acc = czsl_on(model, v.val, inputs.semantics, v.val_classes)
        log.info("%s %s fold %d: val per-class accuracy %.4f", cfg.model, model.hparams, fold, acc)
        return acc, model

    val_acc, hparams, model, table = choose(cfg, len(folds), fit_and_score, "val_czsl")
    v = folds[0]
    gamma, val_h = calibrate(model, v, inputs.semantics)

    seen = inputs.seen
    final, fit_log, seconds = refit(cfg, hparams, inputs.splits["trainval"], seen, inputs.semantics)
    log.info("%s refitted on trainval in %.1f s; val accuracy %.4f, gamma %.4f (val H %.4f)",
             cfg.model, seconds, val_acc, gamma, val_h)
    return {
        "model": cfg.model, "hparams": final.hparams, "state": final.state(), "gamma": float(gamma),
        "config": asdict(cfg), "classes": inputs.classes, "seen": seen.tolist(),
        "validation": {"val_czsl": val_acc, "val_H": float(val_h), "folds": len(folds), "train_classes": v.train_classes.tolist(),
                       "val_classes": v.val_classes.tolist(), "table": table},
        "fit": untimed(fit_log),
    }


BACKBONE_KEYS = ("backbone", "model", "pretrained", "image_size", "resize_size", "interpolation", "mean", "std",
                 "feature_dim", "options")  # what a checkpoint records of its features' backbone (predict builds it
                                            # from ``options``, load_backbone's arguments, and checks the rest)


def train_files(features: Path, semantics: Path, cfg: TrainConfig, output: Path,
                clip_features: Path | None = None) -> dict[str, Any]:
    """Train on cached files and save the checkpoint to ``output``: what ``cli.py train`` and the DVC
    stage both run. Returns the checkpoint."""
    extra = {"clip": clip_features} if clip_features else None
    inputs = load_inputs(features, semantics, cfg.semantics, extra)
    digest = semantics_digest(inputs.semantics)  # before training: what evaluate and predict read again
    checkpoint = train(inputs, cfg)
    checkpoint["semantics_digest"] = digest
    # relative to the model's folder: the same bytes in every checkout, found from any working directory
    checkpoint["files"] = {name: os.path.relpath(path.resolve(), output.resolve().parent)
                           for name, path in (("features", features), ("semantics", semantics))}
    with FeatureStore(features) as store:  # what predict builds for image files, and checks them against
        checkpoint["backbone"] = {k: store.provenance[k] for k in BACKBONE_KEYS if k in store.provenance}
    save_checkpoint(checkpoint, output)
    return checkpoint


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """One line: the model, its hyperparameters and its validation score."""
    v = checkpoint["validation"]
    score = (f"validation-tag mAP {v['val_mAP']:.4f}" if checkpoint.get("multilabel")
             else f"val accuracy {v['val_czsl']:.4f}, gamma {checkpoint['gamma']:.4f}")
    return f"{checkpoint['model']} {checkpoint['hparams']}; {score}"


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays as torch tensors and numpy scalars as Python numbers, so that the
    checkpoint loads with ``torch.load(weights_only=True)`` (tensors and plain types only)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write a checkpoint of tensors and plain types atomically (``path.partial`` then rename)."""
    buffer = io.BytesIO()  # serialised in memory: a full disk is then a plain OSError on one write
    torch.save(_plain(checkpoint), buffer)
    write_whole(path, buffer.getvalue(), "model")


def load_checkpoint(path: Path) -> tuple[ZSLModel, dict[str, Any]]:
    """The trained model and its checkpoint dict, read with ``weights_only=True``: a checkpoint holding
    anything but tensors and plain types (which could run code when unpickled) is refused."""
    if not path.is_file():
        raise PipelineError(f"{path}: no trained model; run: python cli.py train ...")
    if h5py.is_hdf5(path):
        raise PipelineError(f"{path}: an HDF5 file (a feature store or semantics file), not a model checkpoint; "
                            "pass the .pt file that zsl train wrote (--model-file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign, truncated or unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{path}: not a model checkpoint this package can load safely ({reason[:200]}); "
                            "retrain it: python cli.py train ...") from None
    if not isinstance(checkpoint, dict) or not {"model", "hparams", "state"} <= set(checkpoint):
        raise PipelineError(f"{path}: not a model checkpoint of this package; retrain it: python cli.py train ...")
    problem = _checkpoint_problem(checkpoint)
    if problem:
        raise PipelineError(f"{path}: a damaged model checkpoint ({problem}); retrain it: python cli.py train ...")
    hparams = {k: v for k, v in checkpoint["hparams"].items() if k != "device"}  # one before device left them
    model = make_model(checkpoint["model"], **hparams)
    try:
        model.load_state(checkpoint["state"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{path}: its {checkpoint['model']} state does not fit the model ({reason}); retrain it: "
                            "python cli.py train ...") from None
    return model, checkpoint


def _checkpoint_problem(checkpoint: dict[str, Any]) -> str:
    """What is wrong with the fields of a checkpoint ("" when nothing): each one a checkpoint written by
    :func:`train_files` has, of the type it has, and the seen classes among its classes."""
    types = {"model": str, "hparams": dict, "state": dict, "config": dict, "classes": list, "seen": list,
             "gamma": (int, float), "validation": dict}
    optional = {"gamma"} if checkpoint.get("multilabel") else set()  # multi-label models have no γ
    for key, kind in types.items():
        if key not in checkpoint:
            if key not in optional:
                return f"no {key!r}"
        elif not isinstance(checkpoint[key], kind) or isinstance(checkpoint[key], bool):
            return f"{key!r} is a {type(checkpoint[key]).__name__}"
    classes, seen = checkpoint["classes"], checkpoint["seen"]
    if not all(isinstance(c, str) for c in classes):
        return "'classes' holds something other than names"
    if not all(isinstance(i, int) and 0 <= i < len(classes) for i in seen):
        return f"'seen' holds indices outside the {len(classes)} classes"
    if not isinstance(checkpoint["config"].get("semantics"), str) or not isinstance(checkpoint["config"].get("seed"),
                                                                                   int):
        return "'config' lacks its semantics or seed"
    return ""
