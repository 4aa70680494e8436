"""Evaluate a trained model with the field's protocols; write metrics.json and plots.

- CZSL: per-class mean top-1 accuracy on ``test_unseen`` with the unseen classes as candidates.
- GZSL: U, S and H over all classes, with the γ chosen on validation at training time (and γ=0
  for reference); the seen-unseen curve over γ, its area (AUSUC) and a PNG of it. Only with
  ``test_seen`` images (ImageNet without ``val/`` has none).
- Hit@k (flat, per image) over the unseen classes, and over named candidate sets (e.g. ImageNet
  2-hops / 3-hops / all from ``imagenet-testsets.json``) with and without the training classes.

Multi-label data is evaluated by :func:`pipeline.multilabel.evaluate_multilabel` (tag mAP, F1@k).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import EVALUATE
from pipeline.errors import PipelineError
from pipeline.inputs import Inputs, check_semantics, load_inputs
from pipeline.metrics import (
    BestScores,
    ausuc,
    curve_points,
    gzsl,
    hit_at_k,
    hit_at_k_over,
    per_class_accuracy,
    seen_unseen_curve,
)
from pipeline.models.base import ZSLModel
from pipeline.multilabel import evaluate_multilabel
from pipeline.outputs import write_whole
from pipeline.plots import FIGURES, Curve, plot_seen_unseen_curves
from pipeline.scoring import search
from pipeline.semantics import wordnet as wn
from pipeline.store import FeatureStore
from pipeline.text_files import read_utf8
from pipeline.train import load_checkpoint

log = logging.getLogger(__name__)

PER_CLASS = "per_class.json"  # in the plots folder: each unseen class's accuracy and what it is mistaken for
CURVE_POINTS = 200  # points of the plotted / DVC seen-unseen curve (AUSUC uses the exact curve)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    """Write ``metrics`` as JSON under a temporary name, then rename: a crash or a full disk never
    leaves a half-written (or empty) metrics file, and the previous one stays until the new is whole."""
    write_whole(path, json.dumps(metrics, indent=2) + "\n", "metrics")


def evaluate_files(model_file: Path, features: Path, semantics: Path, metrics: Path, plots: Path,
                   candidate_sets: Path | None = None, clip_features: Path | None = None,
                   ks: tuple[int, ...] = EVALUATE.ks, tag_ks: tuple[int, ...] = EVALUATE.tag_ks) -> dict[str, Any]:
    """Evaluate a saved model on cached files, writing ``metrics`` (JSON) and ``plots``: what ``cli.py
    evaluate`` and the DVC stage both run. Returns the metrics."""
    model, checkpoint = load_checkpoint(model_file)
    inputs = load_inputs(features, semantics, checkpoint["config"]["semantics"],
                         {"clip": clip_features} if clip_features else None)
    check_semantics(inputs.semantics, semantics, checkpoint, model_file)
    sets = read_candidate_sets(candidate_sets, inputs.classes) if candidate_sets else None
    # the numbers first, what produced them last: the columns of `dvc exp show` follow this order
    result = {**evaluate(model, checkpoint, inputs, plots, sets, ks, tag_ks),
              "run": run_description(checkpoint, features)}
    # dvc.yaml declares the data of both plots and the figures folder: [] where this run draws no such
    # plot (so DVC finds every file), and no figure of an earlier run in its place
    drawn = {"seen_unseen": "gzsl" in result and not inputs.multilabel, "f1_at_k": inputs.multilabel}
    (plots / FIGURES).mkdir(parents=True, exist_ok=True)
    if inputs.multilabel:
        write_whole(plots / PER_CLASS, "[]", "plot")
    for name, was_drawn in drawn.items():
        if not was_drawn:
            write_whole(plots / f"{name}.json", "[]", "plot")
            (plots / FIGURES / f"{name}.png").unlink(missing_ok=True)
    write_metrics(result, metrics)
    return result


def run_description(checkpoint: dict[str, Any], features: Path) -> dict[str, Any]:
    """What produced a set of metrics, stored beside them: dataset, backbone and its weights, semantic
    source, model with its chosen hyperparameters and those fixed by the user (one string each: one column
    in ``dvc exp show``), seed, package version."""
    with FeatureStore(features) as store:
        p = store.provenance
    name, network = str(p.get("backbone", "?")), p.get("model")
    backbone = name + (f" {network}" if network and not name.endswith(str(network)) else "")  # the network it runs
    return {"dataset": p.get("dataset", "?"), "backbone": backbone, "weights": str(p.get("pretrained", "?")),
            "semantics": checkpoint["config"]["semantics"], "model": checkpoint["model"],
            "hparams": ", ".join(f"{k}={v}" for k, v in sorted(checkpoint["hparams"].items())),
            "fixed": ", ".join(f"{k}={v}" for k, v in sorted(checkpoint["config"]["hparams"].items())),
            "seed": checkpoint["config"]["seed"], "version": __version__}


def headline(metrics: dict[str, Any]) -> str:
    """One line: ``joint_gcn: CZSL 0.906 · GZSL H 0.634 (U 0.729, S 0.561) · AUSUC 0.587`` (multi-label:
    the mAP and first F1@k of ZSL and GZSL)."""
    name = metrics["model"]
    if "czsl" in metrics:
        line = f"{name}: CZSL {metrics['czsl']['acc']:.3f}"
        if "gzsl" in metrics:
            g = metrics["gzsl"]
            line += f" · GZSL H {g['H']:.3f} (U {g['U']:.3f}, S {g['S']:.3f}) · AUSUC {metrics['ausuc']:.3f}"
        return line
    parts = []
    for setting in ("zsl", "gzsl"):
        m = metrics[setting]
        f1 = next(k for k in m if k.startswith("F1@"))
        parts.append(f"{setting.upper()} mAP {m['mAP']:.3f}, {f1} {m[f1]:.3f}")
    return f"{name}: " + " · ".join(parts)


def read_candidate_sets(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """Named lists of class names (JSON ``{name: [class, ...]}``) as class indices; names not in
    ``classes`` are dropped (an ImageNet test set lists classes that may have no images here)."""
    try:
        data = json.loads(read_utf8(path, "candidate sets"))
    except ValueError as e:
        raise PipelineError(f"{path}: cannot read candidate sets ({e})") from e
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: candidate sets must be a JSON object {{\"set name\": [class, ...]}}, "
                            f"got a JSON {type(data).__name__}")
    index = {c: i for i, c in enumerate(classes)}
    return {name: np.array(sorted(index[c] for c in names if c in index), dtype=np.int64)
            for name, names in data.items() if isinstance(names, list)}


def evaluate(model: ZSLModel, checkpoint: dict[str, Any], inputs: Inputs, plots: Path,
             candidate_sets: dict[str, np.ndarray] | None = None, ks: tuple[int, ...] = EVALUATE.ks,
             tag_ks: tuple[int, ...] = EVALUATE.tag_ks) -> dict[str, Any]:
    """All metrics of ``model`` on the test splits; writes ``plots/seen_unseen.json`` and
    ``plots/figures/seen_unseen.png`` (no GZSL without ``test_seen`` images; multi-label data: P/R/F1 at
    ``tag_ks``, ``plots/f1_at_k.json`` and ``plots/figures/f1_at_k.png``)."""
    if inputs.multilabel:
        return evaluate_multilabel(model, checkpoint, inputs, plots, tag_ks)
    if checkpoint.get("multilabel"):
        raise PipelineError("the model was trained on multi-label data; retrain it on this feature file")
    sem = inputs.semantics
    seen = np.asarray(checkpoint["seen"])
    unseen = inputs.classes_of("test_unseen")
    if np.intersect1d(seen, unseen).size:
        raise PipelineError("test_unseen holds classes the model was trained on; check the splits")
    class_emb = model.class_embeddings(sem)
    test_unseen, test_seen = inputs.splits["test_unseen"], inputs.splits["test_seen"]
    unseen_emb = model.image_embeddings(test_unseen)

    score, top = search(unseen_emb, class_emb, min(max(ks) + 1, len(unseen)), candidates=unseen)
    czsl_ks = tuple(x for x in ks if x <= len(unseen))
    if len(czsl_ks) < len(ks):
        log.info("CZSL: hit@k for k > %d skipped (%d unseen classes)", len(unseen), len(unseen))
    metrics: dict[str, Any] = {
        "czsl": {"acc": per_class_accuracy(top[:, 0], test_unseen.labels), "chance": 1 / len(unseen),
                 **(hit_at_k(top, test_unseen.labels, czsl_ks, scores=score) if czsl_ks else {})},
    }
    rows = per_class_rows(top[:, 0], test_unseen.labels, inputs.classes)
    write_whole(plots / PER_CLASS, json.dumps(rows, indent=1), "plot")

    test_labels = np.concatenate([test_seen.labels, test_unseen.labels])
    test_emb = np.concatenate([model.image_embeddings(test_seen), unseen_emb]) if len(test_seen) else unseen_emb
    if len(test_seen):
        metrics.update(_gzsl_metrics(test_emb, test_labels, class_emb, seen, unseen, checkpoint, plots))
    else:
        log.info("no test_seen images: GZSL (U, S, H, AUSUC) is not evaluated")

    if candidate_sets:
        metrics["hit@k"], skipped = {}, {}
        is_seen = np.isin(np.arange(len(class_emb)), seen).astype(np.float32)
        for name, cand in candidate_sets.items():
            test_classes = np.setdiff1d(cand, seen)
            rows = np.flatnonzero(np.isin(test_labels, test_classes))
            if not len(rows):
                skipped[name] = "no test image of its classes"
                continue
            queries = test_emb[rows]
            # zero-shot; DGP's general setting (the training classes among the candidates, +train); and the
            # same calibrated as GZSL is, the training classes' scores lowered by the validation γ
            for suffix, include_train, bias in (("", False, None), ("+train", True, None),
                                                ("+train_calibrated", True, -checkpoint["gamma"] * is_seen)):
                key = f"{name}{suffix}"
                pool = len(test_classes) + (len(seen) if include_train else 0)
                set_ks = tuple(k for k in ks if k <= pool)  # a set of 10 classes has no hit@20
                if len(set_ks) < len(ks):
                    skipped[key] = f"{', '.join(f'hit@{k}' for k in ks if k > pool)}: only {pool} candidate classes"
                if set_ks:
                    metrics["hit@k"][key] = hit_at_k_over(queries, class_emb, test_labels[rows], test_classes, seen,
                                                          include_train, set_ks, class_bias=bias)
        if skipped:
            metrics["hit@k_skipped"] = skipped
            log.info("candidate sets: skipped %s", "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    metrics["model"] = checkpoint["model"]
    metrics["ties"] = ("acc: argmax (lower class index); hit@k: pessimistic (classes scoring >= the true class "
                       "count ahead)")
    return metrics


def per_class_rows(predicted: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Each class of ``labels``: its images' top-1 accuracy (CZSL: among the unseen classes) and the class
    they are most often ``mistaken_for`` (with its share of the class's images), worst class first; wnids
    shown with their name (``dog (n02084071)``)."""
    def shown(c: int) -> str:
        return wn.display_name(classes[c]) if wn.is_wnid(classes[c]) else classes[c]

    rows = []
    for c in np.unique(labels):
        mine = predicted[labels == c]
        wrong, counts = np.unique(mine[mine != c], return_counts=True)
        rows.append({"class": shown(c), "images": len(mine), "acc": round(float(np.mean(mine == c)), 4),
                     "mistaken_for": shown(wrong[np.argmax(counts)]) if len(wrong) else "",
                     "mistaken_share": round(float(counts.max() / len(mine)), 4) if len(wrong) else 0.0})
    return sorted(rows, key=lambda r: (r["acc"], r["class"]))


def _gzsl_metrics(test_emb: np.ndarray, test_labels: np.ndarray, class_emb: np.ndarray, seen: np.ndarray,
                  unseen: np.ndarray, checkpoint: dict[str, Any], plots: Path) -> dict[str, Any]:
    """GZSL U/S/H (calibrated with the checkpoint's γ, and γ=0), AUSUC; writes the seen-unseen curve.

    Each image's best seen and best unseen class come from two top-1 searches, so no
    [images x classes] matrix is formed (ImageNet: 21K classes)."""
    best = BestScores.search(test_emb, class_emb, seen, unseen)
    gamma = checkpoint["gamma"]
    s, u, gammas = seen_unseen_curve(best, test_labels, seen, unseen, n_points=CURVE_POINTS)
    (plots / FIGURES).mkdir(parents=True, exist_ok=True)
    calibrated = gzsl(best, test_labels, seen, unseen, gamma)
    plot_seen_unseen_curves([Curve("", s, u, (calibrated["S"], calibrated["U"]))], plots / FIGURES / "seen_unseen.png",
                            checkpoint["model"])
    write_whole(plots / "seen_unseen.json", json.dumps(curve_points(s, u, gammas), indent=1), "plot")
    return {
        "gzsl": {**calibrated, "gamma": gamma},
        "gzsl_uncalibrated": gzsl(best, test_labels, seen, unseen, 0.0),
        "ausuc": ausuc(*seen_unseen_curve(best, test_labels, seen, unseen)[:2]),  # the exact curve
    }
