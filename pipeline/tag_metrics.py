"""Multi-label (tag) zero-shot metrics, as the NUS-WIDE literature reports them (LESA, SDL).

* **mAP** (tag-based retrieval): for each tag, rank the images by their score for it and take the
  average precision; mAP is the mean over tags. Tags without a positive image among the
  evaluated ones have no AP and are left out of the mean (their count is reported).
  Ties: AP is computed over distinct score thresholds (as ``sklearn.metrics.average_precision_score``):
  images with equal scores enter the ranking together, so the result does not depend on their
  order.
* **P / R / F1 @ k** (image annotation): each image predicts its k best tags (ties to the lower
  tag index, :func:`pipeline.scoring.search`). Precision = correct predictions / (images x k),
  recall = correct predictions / positive tags, both pooled over images, F1 their harmonic mean
  (0 when both are 0). Images with no positive among the evaluated tags are left out (they have
  nothing to retrieve); when fewer than k tags are evaluated, k is that number.

Tags and images are global indices: ``targets`` [N, C] bool, ``scores`` [N, C], ``topk`` [N, k].
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError

F1_KS = (3, 5)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[C] average precision of each tag (column); NaN for tags without positives."""
    scores, targets = np.asarray(scores), np.asarray(targets, dtype=bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise PipelineError(f"average_precision: scores {scores.shape} and targets {targets.shape} must both be [N, C]")
    if not np.isfinite(scores).all():
        raise PipelineError("average_precision: scores hold NaN or inf")
    out = np.full(scores.shape[1], np.nan)
    for c in np.flatnonzero(targets.any(axis=0)):
        order = np.argsort(-scores[:, c], kind="stable")
        ranked, hits = scores[order, c], targets[order, c]
        last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # end of each group of equal scores
        tp = np.cumsum(hits)[last]
        out[c] = float(np.sum(tp / (last + 1) * np.diff(tp, prepend=0)) / tp[-1])
    return out


def expected_random_ap(n_images: int, n_positives: int) -> float:
    """Expected AP of a tag with ``n_positives`` of ``n_images`` under a uniformly random ranking:
    ``(H_N + (P-1)/(N-1) * (N - H_N)) / N`` with ``H_N`` the N-th harmonic number."""
    n, p = n_images, n_positives
    if not 0 < p <= n:
        raise PipelineError(f"expected_random_ap: need 0 < positives <= images, got {p} of {n}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (harmonic + (p - 1) / (n - 1) * (n - harmonic)) / n


def map_report(scores: np.ndarray, targets: np.ndarray, tags: np.ndarray) -> dict[str, float | int]:
    """mAP over ``tags`` (columns of [N, C] ``scores`` / ``targets``), the mAP of a random
    ranking on the same data, and how many of the tags had no positive image.

    ``mAP`` leaves tags without a positive out; ``mAP_sdl`` follows SDL's ``helper_functions.mAP``
    for comparison with its tables: only the images with a positive among ``tags`` are ranked, and
    a tag without a positive counts as AP 0 in the mean over all ``tags``."""
    tags = np.asarray(tags)
    ap = average_precision(scores[:, tags], targets[:, tags])
    has = ~np.isnan(ap)
    if not has.any():
        raise PipelineError("map_report: no evaluated tag has a positive image")
    counts = targets[:, tags].sum(axis=0)[has]
    with_positive = targets[:, tags].any(axis=1)
    ap_sdl = average_precision(scores[with_positive][:, tags], targets[with_positive][:, tags])
    return {"mAP": float(np.mean(ap[has])), "mAP_sdl": float(np.mean(np.nan_to_num(ap_sdl, nan=0.0))),
            "mAP_random": float(np.mean([expected_random_ap(len(targets), int(p)) for p in counts])),
            "tags": int(has.sum()), "tags_without_positives": int((~has).sum())}


def precision_recall_f1_at_k(topk: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """``{"P@k", "R@k", "F1@k"}`` from each image's best tags ``topk`` [N, >=k] (global tag
    indices best first, -1 for missing places) against ``targets`` [N, C] restricted to the
    evaluated tags (all other columns False)."""
    topk, targets = np.asarray(topk), np.asarray(targets, dtype=bool)
    if topk.ndim != 2 or len(topk) != len(targets):
        raise PipelineError(f"precision_recall_f1_at_k: top-k {topk.shape} and targets {targets.shape} disagree")
    rows = np.flatnonzero(targets.any(axis=1))
    if not len(rows):
        raise PipelineError("precision_recall_f1_at_k: no image has a positive tag")
    k_eff = min(k, int((topk[rows[0]] >= 0).sum()))  # every row has the same number of candidates
    top = topk[rows, :k_eff]
    correct = np.take_along_axis(targets[rows], np.maximum(top, 0), axis=1) & (top >= 0)
    tp = int(correct.sum())
    precision, recall = tp / (len(rows) * k_eff), tp / int(targets[rows].sum())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"P@{k}": precision, f"R@{k}": recall, f"F1@{k}": f1}
