"""Zero-shot evaluation protocols: CZSL, GZSL (U, S, H; calibrated stacking; seen-unseen
curve and AUSUC) and the ImageNet hit@k.

Conventions shared by every function:

* classes are global indices: columns of a score matrix ``scores`` [N, C] (from
  :func:`pipeline.scoring.scores`) and values of ``labels`` [N]; ``seen`` and ``unseen`` are
  arrays of such indices;
* GZSL (:func:`gzsl`, :func:`seen_unseen_curve`, :func:`select_gamma`) depends on each image's
  best seen and best unseen class only: pass the matrix, or :class:`BestScores` found by search
  (:meth:`BestScores.search`) when the matrix is too large (ImageNet: 21K classes);
* a prediction is the highest-scoring candidate class, ties going to the lower class index
  (``np.argmax``); Hit@k given the scores ranks pessimistically (DGP's rule: every class scoring
  at least the true class's score counts as ahead of it);
* accuracies are per-class means (Xian et al., GBU protocol): each class with at least one
  test image weighs the same; classes without test images are skipped;
* accuracies are fractions in [0, 1], returned as Python floats.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import EVALUATE
from pipeline.errors import PipelineError
from pipeline.outputs import write_whole

HIT_KS = EVALUATE.ks


@dataclass(frozen=True)
class BestScores:
    """Per image [N]: the best seen class and its score, the best unseen class and its score
    (float64; ties to the lower class index), all that GZSL needs of a score matrix."""

    seen: np.ndarray
    seen_score: np.ndarray
    unseen: np.ndarray
    unseen_score: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, seen: np.ndarray, unseen: np.ndarray) -> BestScores:
        """From a score matrix [N, C]; ``seen`` and ``unseen`` sorted class indices."""
        return cls(*_best(scores, seen), *_best(scores, unseen))

    @classmethod
    def search(cls, queries: np.ndarray, classes: np.ndarray, seen: np.ndarray, unseen: np.ndarray,
               **search_args) -> BestScores:
        """By nearest-class search of image embeddings ``queries`` [N, J] among class embeddings
        ``classes`` [C, J] (top-1 of the seen, then of the unseen classes): no N x C matrix."""
        from pipeline.scoring import search

        if np.intersect1d(seen, unseen).size:
            raise PipelineError("gzsl: a class is both seen and unseen")
        best = []
        for candidates in (np.unique(seen), np.unique(unseen)):
            score, index = search(queries, classes, 1, candidates=candidates, **search_args)
            best += [index[:, 0], score[:, 0].astype(np.float64)]
        return cls(*best)

    def __len__(self) -> int:
        return len(self.seen)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean over classes of the top-1 accuracy of each class's test images.

    ``pred`` and ``labels`` are [N] class indices. ``classes`` (default: those in ``labels``)
    are the classes averaged over; images of other classes are ignored, and classes without
    images skipped. Raises PipelineError when no class has an image.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or labels.ndim != 1:
        raise PipelineError(f"per_class_accuracy: predictions {pred.shape} and labels {labels.shape} must be [N]")
    return _per_class_mean(pred == labels, labels, classes)


def czsl_accuracy(scores: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> float:
    """Conventional ZSL accuracy: test images of unseen classes, candidates the unseen classes only.

    ``scores`` is either [N, C] over all classes (only the ``unseen`` columns compete) or [N]
    predicted class indices already restricted to the unseen classes (e.g. the top-1 of
    :func:`pipeline.scoring.search` with ``candidates=unseen``). Every label must be unseen.
    """
    scores, labels, unseen = np.asarray(scores), np.asarray(labels), np.unique(unseen)
    if not np.isin(labels, unseen).all():
        raise PipelineError("czsl_accuracy: some labels are not unseen classes; pass only the test_unseen images")
    if scores.ndim == 2:
        _check_scores(scores, labels)
        pred = unseen[np.argmax(scores[:, unseen], axis=1)]
    else:
        pred = scores
    return per_class_accuracy(pred, labels, unseen)


def gzsl(scores: np.ndarray | BestScores, labels: np.ndarray, seen: np.ndarray, unseen: np.ndarray,
         gamma: float = 0.0) -> dict:
    """Generalised ZSL: ``{"U", "S", "H"}``, predictions over all seen and unseen classes.

    U is the per-class accuracy on the test images of unseen classes, S on those of seen
    classes, H their harmonic mean 2US / (U + S) (0 when U + S = 0). Calibrated stacking
    (Chao et al. 2016): ``gamma`` is subtracted from the scores of seen classes before the
    argmax; choose it with :func:`select_gamma` on validation data. Needs test images of both.
    """
    best, labels, seen, unseen = _gzsl_inputs(scores, labels, seen, unseen)
    calibrated = best.seen_score - gamma
    seen_wins = (calibrated > best.unseen_score) | ((calibrated == best.unseen_score) & (best.seen < best.unseen))
    pred = np.where(seen_wins, best.seen, best.unseen)
    is_unseen = np.isin(labels, unseen)
    u = per_class_accuracy(pred[is_unseen], labels[is_unseen], unseen)
    s = per_class_accuracy(pred[~is_unseen], labels[~is_unseen], seen)
    return {"U": u, "S": s, "H": harmonic_mean(u, s)}


def harmonic_mean(u: float, s: float) -> float:
    """2us / (u + s), 0 when both are 0."""
    return float(2 * u * s / (u + s)) if u + s > 0 else 0.0


def seen_unseen_curve(
    scores: np.ndarray | BestScores, labels: np.ndarray, seen: np.ndarray, unseen: np.ndarray,
    n_points: int | None = None, gammas: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seen-unseen accuracy curve (Chao et al. 2016): S and U of :func:`gzsl` as gamma sweeps.

    An image's prediction only changes where gamma crosses d = (best seen score) - (best
    unseen score): it is a seen class while d > gamma. By default the gammas are one below
    every d (all predictions seen: U = 0, S maximal), the midpoints between consecutive
    distinct d, and one above every d (all unseen: S = 0, U = CZSL accuracy), in increasing
    order: every distinct (S, U) of the sweep, so :func:`ausuc` of it is exact. ``n_points``
    keeps that many of them (evenly spaced in rank, both ends kept) for plotting; ``gammas``
    evaluates given values instead. Returns (S, U, gammas), float64 arrays of equal length.
    """
    best, labels, seen, unseen = _gzsl_inputs(scores, labels, seen, unseen)
    d = best.seen_score - best.unseen_score
    if gammas is None:
        gammas = _breakpoints(d)
        if n_points is not None and n_points < len(gammas):
            gammas = gammas[np.unique(np.linspace(0, len(gammas) - 1, max(n_points, 2)).round().astype(int))]
    gammas = np.asarray(gammas, dtype=np.float64)

    # a gamma predicts "seen" for exactly the images after a prefix of this order:
    # by d, and at equal d the images whose best unseen class has the lower index first
    unseen_first = best.unseen < best.seen
    order = np.lexsort((~unseen_first, d))
    d_sorted, unseen_first = d[order], unseen_first[order]
    n_unseen_first = np.concatenate([[0], np.cumsum(unseen_first)])
    left = np.searchsorted(d_sorted, gammas, "left")
    right = np.searchsorted(d_sorted, gammas, "right")
    n_predicted_unseen = left + n_unseen_first[right] - n_unseen_first[left]  # at d == gamma, ties by index

    # per-class accuracy is a weighted count of correct images: weight 1 / (n_class * n_classes)
    is_unseen = np.isin(labels, unseen)
    weight = _class_weights(labels, is_unseen) + _class_weights(labels, ~is_unseen)
    u_gain = np.concatenate([[0], np.cumsum((weight * (is_unseen & (best.unseen == labels)))[order])])
    s_gain = np.concatenate([[0], np.cumsum((weight * (~is_unseen & (best.seen == labels)))[order])])
    u = u_gain[n_predicted_unseen]
    s = s_gain[-1] - s_gain[n_predicted_unseen]
    return s, u, gammas


def select_gamma(
    scores_val: np.ndarray | BestScores, labels_val: np.ndarray, seen: np.ndarray, unseen: np.ndarray,
    gammas: np.ndarray | None = None,
) -> tuple[float, float]:
    """The calibration gamma maximising H on VALIDATION data, and that H.

    The scores must come from a validation split (seen classes' held-out images and
    validation-unseen classes), never from the test images: a gamma tuned on test inflates
    H. ``gammas`` defaults to every distinct operating point of :func:`seen_unseen_curve`;
    among equal H the smallest gamma wins.
    """
    s, u, gammas = seen_unseen_curve(scores_val, labels_val, seen, unseen, gammas=gammas)
    h = np.where(s + u > 0, 2 * s * u / np.where(s + u > 0, s + u, 1), 0.0)
    best = int(np.argmax(h.round(12)))  # equal up to summation order counts as equal
    return float(gammas[best]), float(h[best])


def ausuc(s: np.ndarray, u: np.ndarray) -> float:
    """Area under the seen-unseen curve: trapezoids of U over S sorted (Chao et al. 2016).

    Points of equal S are taken in decreasing U, the order of the sweep (S falls while U
    rises), so vertical steps add no area. The points are used as given (no extension to the
    axes); :func:`seen_unseen_curve` already reaches both. A perfect classifier scores 1.
    """
    s, u = np.asarray(s, dtype=np.float64), np.asarray(u, dtype=np.float64)
    if s.shape != u.shape or s.ndim != 1 or len(s) < 2:
        raise PipelineError(f"ausuc: S {s.shape} and U {u.shape} must be two points or more of equal length")
    order = np.lexsort((-u, s))
    s, u = s[order], u[order]
    return float(np.sum(np.diff(s) * (u[1:] + u[:-1]) / 2))


def curve_points(s: np.ndarray, u: np.ndarray, gammas: np.ndarray, path: str | Path | None = None) -> list[dict]:
    """The curve as ``[{"S": .., "U": .., "gamma": ..}, ...]``; written as JSON to ``path`` if
    given, a file ``dvc plots`` renders offline (e.g. ``x: S, y: U``)."""
    points = [{"S": float(a), "U": float(b), "gamma": float(g)} for a, b, g in zip(s, u, gammas, strict=True)]
    if path is not None:
        write_whole(Path(path), json.dumps(points, indent=1) + "\n", "plot")
    return points


def hit_at_k(topk: np.ndarray, labels: np.ndarray, ks=HIT_KS, per_class: bool = False,
             scores: np.ndarray | None = None) -> dict[str, float]:
    """``{"hit@k": ...}``: the fraction of images whose label is among their first k classes.

    ``topk`` [N, K] holds class indices best first (:func:`pipeline.scoring.search`), K >=
    max(ks). With ``scores`` [N, K], their scores, ranks are pessimistic under ties (DGP's
    ``evaluate_imagenet.py``): the true class's rank counts every listed class scoring at least as
    much, so K must exceed max(ks) (or list every candidate); without, ties follow ``topk``'s
    order. Flat (default): averaged over images, as GCNZ and DGP report on ImageNet;
    ``per_class``: averaged per class, then over classes.
    """
    topk, labels = np.asarray(topk), np.asarray(labels)
    if topk.ndim != 2 or len(topk) != len(labels) or labels.ndim != 1:
        raise PipelineError(f"hit_at_k: top-k {topk.shape} and labels {labels.shape} must be [N, K] and [N]")
    if max(ks) > topk.shape[1]:
        raise PipelineError(f"hit_at_k: hit@{max(ks)} needs {max(ks)} classes per image, got {topk.shape[1]}")
    if len(labels) == 0:
        raise PipelineError("hit_at_k: no test images")
    found = topk == labels[:, None]
    rank = np.where(found, np.arange(topk.shape[1]), topk.shape[1]).min(axis=1)
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape != topk.shape:
            raise PipelineError(f"hit_at_k: scores {scores.shape} must match top-k {topk.shape}")
        true = scores[np.arange(len(labels)), np.minimum(rank, topk.shape[1] - 1)]
        rank = np.where(rank < topk.shape[1], (scores >= true[:, None]).sum(axis=1) - 1, rank)
    return {f"hit@{k}": (_per_class_mean(rank < k, labels) if per_class else float(np.mean(rank < k))) for k in ks}


def hit_at_k_over(
    queries: np.ndarray, classes: np.ndarray, labels: np.ndarray, candidates: np.ndarray,
    train_classes: np.ndarray, include_train: bool, ks=HIT_KS, per_class: bool = False, **search_args,
) -> dict[str, float]:
    """Hit@k of images ``queries`` [N, J] among class embeddings ``classes`` [C, J].

    ``candidates``: the test classes (e.g. ImageNet "2-hops", "3-hops" or "all" 21K minus the
    1K); every label must be one. ``include_train`` adds ``train_classes`` to the candidates
    (the "+1K" setting, harder: a test image may now be matched to a training class);
    otherwise they are removed from them. ``search_args`` go to :func:`pipeline.scoring.search`.
    """
    from pipeline.scoring import search

    labels, train_classes = np.asarray(labels), np.asarray(train_classes)
    test_classes = np.setdiff1d(candidates, train_classes)
    if not np.isin(labels, test_classes).all():
        raise PipelineError("hit_at_k_over: some labels are not among the candidate test classes")
    pool = np.union1d(test_classes, train_classes) if include_train else test_classes
    scores, topk = search(queries, classes, min(max(ks) + 1, len(pool)), candidates=pool, **search_args)
    return hit_at_k(topk, labels, ks, per_class, scores)


def _per_class_mean(correct: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean over the classes (of ``classes`` present in ``labels``) of the mean of ``correct``."""
    keep = np.ones(len(labels), bool) if classes is None else np.isin(labels, classes)
    if not keep.any():
        raise PipelineError("per-class accuracy: no test image of the classes evaluated")
    _, cls = np.unique(labels[keep], return_inverse=True)
    return float(np.mean(np.bincount(cls, weights=correct[keep]) / np.bincount(cls)))


def _class_weights(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per image of ``mask``: 1 / (images of its class x classes in ``mask``); 0 elsewhere."""
    weight = np.zeros(len(labels))
    _, cls, count = np.unique(labels[mask], return_inverse=True, return_counts=True)
    weight[mask] = 1.0 / (count[cls] * len(count))
    return weight


def _best(scores: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the best of ``classes`` (sorted: lower index on ties) and its float64 score."""
    column = np.argmax(scores[:, classes], axis=1)
    return classes[column], scores[np.arange(len(scores)), classes[column]].astype(np.float64)


def _breakpoints(d: np.ndarray) -> np.ndarray:
    """Gammas giving every distinct prediction set: below all d, between distinct d, above all."""
    values = np.unique(d)
    return np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])


def _check_scores(scores: np.ndarray, labels: np.ndarray) -> None:
    if scores.ndim != 2 or len(scores) != len(labels) or labels.ndim != 1:
        raise PipelineError(f"scores {scores.shape} and labels {labels.shape} must be [N, C] and [N]")
    if not np.isfinite(scores).all():
        raise PipelineError("scores hold NaN or inf; drop the images of failed rows (ok=False) first")


def _gzsl_inputs(scores, labels, seen, unseen) -> tuple[BestScores, np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    seen, unseen = np.unique(seen), np.unique(unseen)
    if np.intersect1d(seen, unseen).size:
        raise PipelineError("gzsl: a class is both seen and unseen")
    if isinstance(scores, BestScores):
        best = scores
        if len(best) != len(labels) or labels.ndim != 1:
            raise PipelineError(f"gzsl: best scores of {len(best)} images but labels {labels.shape}")
        if not (np.isfinite(best.seen_score).all() and np.isfinite(best.unseen_score).all()):
            raise PipelineError("scores hold NaN or inf; drop the images of failed rows (ok=False) first")
    else:
        scores = np.asarray(scores)
        _check_scores(scores, labels)
        if max(seen.max(initial=-1), unseen.max(initial=-1)) >= scores.shape[1]:
            raise PipelineError(f"gzsl: class indices beyond the {scores.shape[1]} score columns")
        best = BestScores.of(scores, seen, unseen)
    is_unseen, is_seen = np.isin(labels, unseen), np.isin(labels, seen)
    if not (is_unseen | is_seen).all():
        raise PipelineError("gzsl: some labels are neither seen nor unseen classes")
    if not is_unseen.any() or not is_seen.any():
        raise PipelineError("gzsl: needs test images of both seen and unseen classes (test_seen and test_unseen)")
    return best, labels, seen, unseen
