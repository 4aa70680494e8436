"""Multi-label zero-shot training and evaluation: rank every tag, seen and unseen, for each image.

Training (:func:`train_multilabel`; no test image is read):

1. Validation from ``trainval`` only: ``val_fraction`` of the seen tags that occur there become
   validation tags, and ``val_fraction`` of the images are held out; both drawn with the seed
   (``val_folds`` draws, seeds ``seed``, ``seed + 1``, ..., averaged; one for ``sdl`` by default).
2. Every combination of the model's grid is fitted on the other images with the other seen tags
   (validation tags hidden, as unseen tags are at test) and scored by the mAP of the
   validation tags on the held-out images: a zero-shot mAP on data the fit never saw.
3. The best combination is refitted on all of ``trainval`` with every seen tag.

Evaluation (:func:`evaluate_multilabel`) on ``test``, metrics in :mod:`pipeline.tag_metrics`:

* ``zsl``: candidates are the unseen tags: mAP (and the mAP of a random ranking), P/R/F1@k;
* ``gzsl``: candidates are all tags, seen and unseen: the same metrics;
* ``plots/f1_at_k.json``, ``plots/figures/f1_at_k.png``: P, R and F1 of both settings for k = 1..10.

Top-k tags come from :func:`pipeline.scoring.search` (FAISS for many tags and images), the
per-tag rankings of mAP from the score matrix :func:`pipeline.scoring.scores`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.inputs import Inputs
from pipeline.models.base import Split, ZSLModel
from pipeline.outputs import write_whole
from pipeline.plots import FIGURES, plot_f1_at_k
from pipeline.scoring import scores, search
from pipeline.selection import TrainConfig, choose, refit, untimed
from pipeline.tag_metrics import F1_KS, map_report, precision_recall_f1_at_k

log = logging.getLogger(__name__)
CURVE_KS = tuple(range(1, 11))  # k of the plotted P/R/F1@k curves


@dataclass
class TagValidation:
    """Validation data carved from trainval: fit on ``train`` with ``train_tags``, score the
    ``val_tags`` on ``holdout``."""

    train: Split
    holdout: Split
    train_tags: np.ndarray
    val_tags: np.ndarray


def tag_validation_split(inputs: Inputs, fraction: float, seed: int) -> TagValidation:
    """Validation tags and held-out images of ``trainval`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    trainval = inputs.splits["trainval"]
    assert trainval.tags is not None and inputs.unseen_tags is not None
    seen = np.setdiff1d(np.arange(len(inputs.classes)), inputs.unseen_tags)
    present = seen[trainval.tags[:, seen].any(axis=0)]
    n_val = max(1, round(fraction * len(present)))
    if len(present) < 2 or len(trainval) < 2:
        raise PipelineError(f"validation needs two seen tags with images and two images; trainval has "
                            f"{len(present)} and {len(trainval)}")
    val_tags = np.sort(rng.choice(present, n_val, replace=False))
    holdout = np.zeros(len(trainval), bool)
    holdout[rng.choice(len(trainval), max(1, round(fraction * len(trainval))), replace=False)] = True
    return TagValidation(trainval.subset(np.flatnonzero(~holdout)), trainval.subset(np.flatnonzero(holdout)),
                         np.setdiff1d(seen, val_tags), val_tags)


def validation_map(model: ZSLModel, v: TagValidation, inputs: Inputs) -> float:
    """mAP of the validation tags on the held-out images."""
    assert v.holdout.tags is not None
    full = scores(model.image_embeddings(v.holdout), model.class_embeddings(inputs.semantics)[v.val_tags])
    return map_report(full, v.holdout.tags[:, v.val_tags], np.arange(len(v.val_tags)))["mAP"]


def train_multilabel(inputs: Inputs, cfg: TrainConfig) -> dict[str, Any]:
    """Select on validation, refit on trainval; returns the checkpoint dict (as :func:`pipeline.train.train`)."""
    if not cfg.model_class.multilabel:
        raise PipelineError(f"model {cfg.model!r} learns one class per image; on multi-label data use model: sdl")
    folds = [tag_validation_split(inputs, cfg.val_fraction, cfg.seed + k) for k in range(cfg.folds())]

    def fit_and_score(hparams: dict[str, Any], fold: int) -> tuple[float, ZSLModel]:
        v = folds[fold]
        model = cfg.model_class(**hparams, device=cfg.device)
        fit_log = model.fit(v.train, v.train_tags, inputs.semantics, cfg.seed)
        val_map = validation_map(model, v, inputs)
        log.info("%s %s fold %d: validation-tag mAP %.4f (fitted in %.1f s)", cfg.model, hparams, fold, val_map,
                 fit_log.get("seconds", 0.0))
        return val_map, model

    val_map, hparams, _, table = choose(cfg, len(folds), fit_and_score, "val_mAP")
    v = folds[0]

    seen = np.setdiff1d(np.arange(len(inputs.classes)), inputs.unseen_tags)
    final, fit_log, seconds = refit(cfg, hparams, inputs.splits["trainval"], seen, inputs.semantics)
    log.info("%s refitted on trainval in %.1f s; validation-tag mAP %.4f", cfg.model, seconds, val_map)
    return {
        "model": cfg.model, "hparams": final.hparams, "state": final.state(), "multilabel": True,
        "config": asdict(cfg), "classes": inputs.classes, "seen": seen.tolist(),
        "unseen": np.asarray(inputs.unseen_tags).tolist(),
        "validation": {"val_mAP": val_map, "folds": len(folds), "train_tags": v.train_tags.tolist(), "val_tags": v.val_tags.tolist(),
                       "table": table},
        "fit": untimed(fit_log),
    }


def _setting_metrics(embeddings: np.ndarray, class_emb: np.ndarray, full: np.ndarray, targets: np.ndarray,
                     tags: np.ndarray, ks: tuple[int, ...]) -> tuple[dict[str, Any], dict[int, dict[str, float]]]:
    """mAP over ``tags`` (from ``full``, the [N, C] scores of every tag) and P/R/F1@k (reported
    ``ks``, and the curve's k) with ``tags`` as the candidates of the top-k search."""
    report: dict[str, Any] = dict(map_report(full, targets, tags))
    restricted = np.zeros_like(targets)
    restricted[:, tags] = targets[:, tags]
    top = search(embeddings, class_emb, max(max(ks), max(CURVE_KS)), candidates=tags)[1]
    curve = {k: precision_recall_f1_at_k(top, restricted, k) for k in sorted(set(ks) | set(CURVE_KS))}
    for k in ks:
        report.update(curve[k])
    report["images"] = int(restricted.any(axis=1).sum())
    return report, curve


def zsl_gzsl_metrics(embeddings: np.ndarray, class_emb: np.ndarray, targets: np.ndarray, unseen_tags: np.ndarray,
                     ks: tuple[int, ...] = F1_KS) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, float]]]]:
    """``zsl`` (the unseen tags are the candidates) and ``gzsl`` (every tag) metrics of image ``embeddings``
    ([N, E] or [N, K, E]) scored against the tags' ``class_emb`` [C, E], and each setting's P/R/F1@k curve."""
    full = scores(embeddings, class_emb)  # once: ZSL reads the unseen tags' columns
    metrics: dict[str, Any] = {}
    curves = {}
    for setting, tags in (("zsl", np.asarray(unseen_tags)), ("gzsl", np.arange(len(class_emb)))):
        metrics[setting], curves[setting] = _setting_metrics(embeddings, class_emb, full, targets, tags, ks)
    return metrics, curves


def evaluate_multilabel(model: ZSLModel, checkpoint: dict[str, Any], inputs: Inputs, plots: Path,
                        ks: tuple[int, ...] = F1_KS) -> dict[str, Any]:
    """ZSL and GZSL tag metrics of ``model`` on ``test``; writes ``plots/f1_at_k.json`` (a row per k: ``zsl_P``,
    ``zsl_R``, ``zsl_F1``, ``gzsl_P``, ...) and ``plots/figures/f1_at_k.png``."""
    test = inputs.splits["test"]
    assert test.tags is not None and inputs.unseen_tags is not None
    if np.intersect1d(checkpoint["seen"], inputs.unseen_tags).size:
        raise PipelineError("the model was trained on tags that are unseen here; retrain on this feature file")
    metrics, curves = zsl_gzsl_metrics(model.image_embeddings(test), model.class_embeddings(inputs.semantics),
                                       test.tags, inputs.unseen_tags, ks)
    metrics["model"] = checkpoint["model"]  # after the numbers, as evaluate orders them
    rows = [{"k": k, **{f"{s}_{m.split('@')[0]}": curves[s][k][m] for s in curves for m in curves[s][k]}}
            for k in curves["zsl"]]  # one row per k, a column per setting and measure: one line each in dvc plots
    write_whole(plots / "f1_at_k.json", json.dumps(rows, indent=1), "plot")
    (plots / FIGURES).mkdir(parents=True, exist_ok=True)
    plot_f1_at_k(curves, plots / FIGURES / "f1_at_k.png", checkpoint["model"])
    return metrics
