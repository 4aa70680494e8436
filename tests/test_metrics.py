"""Evaluation protocols on hand-made scores whose results are worked out in the comments."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.metrics import (
    BestScores,
    ausuc,
    curve_points,
    czsl_accuracy,
    gzsl,
    hit_at_k,
    hit_at_k_over,
    per_class_accuracy,
    seen_unseen_curve,
    select_gamma,
)
from pipeline.plots import Curve, plot_seen_unseen_curves

SEEN, UNSEEN = np.array([0, 1]), np.array([2, 3])
# Six test images over classes 0, 1 (seen) and 2, 3 (unseen).
# d = best seen score - best unseen score decides seen vs unseen under calibration gamma.
GZSL_SCORES = np.array([
    [0.9, 0.1, 0.5, 0.2],   # a: label 0, d = +0.4, best seen 0 (right), best unseen 2
    [0.3, 0.6, 0.5, 0.1],   # b: label 1, d = +0.1, best seen 1 (right)
    [0.2, 0.4, 0.0, 0.7],   # c: label 1, d = -0.3, best seen 1 (right)
    [0.8, 0.1, 0.6, 0.3],   # d: label 2, d = +0.2, best unseen 2 (right)
    [0.1, 0.2, 0.3, 0.9],   # e: label 3, d = -0.7, best unseen 3 (right)
    [0.5, 0.4, 0.45, 0.3],  # f: label 3, d = +0.05, best unseen 2 (wrong)
])
GZSL_LABELS = np.array([0, 1, 1, 2, 3, 3])


def test_per_class_accuracy_differs_from_overall_accuracy_on_unbalanced_classes():
    labels = np.array([0, 0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0, 0])
    assert np.mean(pred == labels) == pytest.approx(0.8)
    assert per_class_accuracy(pred, labels) == pytest.approx(0.5)  # (4/4 + 0/1) / 2


def test_per_class_accuracy_skips_classes_without_images_and_ignores_other_classes():
    labels = np.array([0, 0, 0, 0, 1])
    pred = np.array([0, 0, 0, 1, 0])
    assert per_class_accuracy(pred, labels, classes=[0, 1, 7]) == pytest.approx((0.75 + 0) / 2)
    assert per_class_accuracy(pred, labels, classes=[0]) == pytest.approx(0.75)
    with pytest.raises(PipelineError, match="no test image"):
        per_class_accuracy(pred, labels, classes=[5])


def test_czsl_only_unseen_classes_compete():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.2],  # label 2: seen class 0 is best overall, 2 best among unseen: right
        [0.1, 0.8, 0.6, 0.7],  # label 3: right
        [0.0, 0.0, 0.4, 0.3],  # label 3: predicted 2, wrong
    ])
    labels = np.array([2, 3, 3])
    assert czsl_accuracy(scores, labels, UNSEEN) == pytest.approx((1 + 0.5) / 2)
    assert czsl_accuracy(np.array([2, 3, 2]), labels, UNSEEN) == pytest.approx(0.75)  # given top-1
    with pytest.raises(PipelineError, match="not unseen"):
        czsl_accuracy(scores, np.array([0, 3, 3]), UNSEEN)


def test_gzsl_u_s_h_without_calibration():
    # predictions over all classes: a 0 (right), b 1 (right), c 3, d 0, e 3 (right), f 0
    result = gzsl(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN)
    assert result["S"] == pytest.approx((1 + 0.5) / 2)  # class 0: 1/1, class 1: 1/2
    assert result["U"] == pytest.approx((0 + 0.5) / 2)  # class 2: 0/1, class 3: 1/2
    assert result["H"] == pytest.approx(2 * 0.75 * 0.25 / (0.75 + 0.25))


def test_calibrated_stacking_moves_images_with_d_below_gamma_to_unseen_classes():
    # gamma 0.3: b (d 0.1) -> 2 wrong, d (d 0.2) -> 2 right, f (d 0.05) -> 2 wrong; a stays 0
    result = gzsl(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN, gamma=0.3)
    assert result["S"] == pytest.approx((1 + 0) / 2)
    assert result["U"] == pytest.approx((1 + 0.5) / 2)
    assert result["H"] == pytest.approx(0.6)


def test_harmonic_mean_is_zero_when_nothing_is_right():
    labels = np.array([0, 2])
    scores = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert gzsl(scores, labels, SEEN, UNSEEN) == {"U": 0.0, "S": 0.0, "H": 0.0}


def test_gzsl_needs_both_seen_and_unseen_test_images():
    with pytest.raises(PipelineError, match="both seen and unseen"):
        gzsl(GZSL_SCORES[:3], GZSL_LABELS[:3], SEEN, UNSEEN)


# Sorted by d the images are e, c, f, b, d, a; raising gamma past each moves it to unseen:
#   unseen prefix   S     U
#   none            1     0      (c is right as seen: class 1 is 2/2)
#   e               1     0.25
#   e c             0.75  0.25
#   e c f           0.75  0.25   (f's best unseen is wrong)
#   e c f b         0.5   0.25
#   e c f b d       0.5   0.75   H = 0.6, the best, for gamma in (0.2, 0.4)
#   all             0     0.75
CURVE_S = [1, 1, 0.75, 0.75, 0.5, 0.5, 0]
CURVE_U = [0, 0.25, 0.25, 0.25, 0.25, 0.75, 0.75]


def test_seen_unseen_curve_visits_every_operating_point_from_all_seen_to_all_unseen():
    s, u, gammas = seen_unseen_curve(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN)
    np.testing.assert_allclose(s, CURVE_S)
    np.testing.assert_allclose(u, CURVE_U)
    np.testing.assert_allclose(gammas, [-1.7, -0.5, -0.125, 0.075, 0.15, 0.3, 1.4], atol=1e-7)
    unseen_images = np.isin(GZSL_LABELS, UNSEEN)
    assert u[-1] == pytest.approx(czsl_accuracy(GZSL_SCORES[unseen_images], GZSL_LABELS[unseen_images], UNSEEN))


def test_seen_unseen_curve_agrees_with_gzsl_at_every_gamma():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 12))
    labels = rng.integers(0, 12, size=300)
    seen, unseen = np.arange(7), np.arange(7, 12)
    s, u, gammas = seen_unseen_curve(scores, labels, seen, unseen)
    assert len(gammas) == len(np.unique(scores[:, :7].max(1) - scores[:, 7:].max(1))) + 1
    for i in range(0, len(gammas), 17):
        result = gzsl(scores, labels, seen, unseen, gamma=gammas[i])
        assert (result["S"], result["U"]) == pytest.approx((s[i], u[i]))
    s3, u3, g3 = seen_unseen_curve(scores, labels, seen, unseen, n_points=3)
    assert (s3[0], u3[-1], g3[0], g3[-1]) == (s[0], u[-1], gammas[0], gammas[-1])
    assert len(g3) == 3


def test_curve_at_a_tie_gives_the_lower_class_index_like_argmax():
    # gamma 0.25 makes image 0's best seen score (0.75 - 0.25) equal its best unseen one (0.5)
    scores = np.array([[0.5, 0.25, 0.75], [0.5, 0.0, 0.25]])
    labels = np.array([2, 0])
    # seen {1, 2}, unseen {0}: the tie goes to unseen class 0, image 0 is wrong
    assert gzsl(scores, labels, [1, 2], [0], gamma=0.25) == {"U": 1.0, "S": 0.0, "H": 0.0}
    s, u, _ = seen_unseen_curve(scores, labels, [1, 2], [0], gammas=[0.25])
    assert (s[0], u[0]) == (0.0, 1.0)
    # the same scores with columns reversed: seen {0, 1}, unseen {2}: the tie goes to seen class 0
    reversed_labels = 2 - labels
    assert gzsl(scores[:, ::-1], reversed_labels, [0, 1], [2], gamma=0.25) == {"U": 1.0, "S": 1.0, "H": 1.0}
    s, u, _ = seen_unseen_curve(scores[:, ::-1], reversed_labels, [0, 1], [2], gammas=[0.25])
    assert (s[0], u[0]) == (1.0, 1.0)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_gzsl_from_search_equals_gzsl_from_the_score_matrix(backend):
    # small integer embeddings: exact scores with many ties, the case where tie rules matter
    rng = np.random.default_rng(1)
    queries = rng.integers(-2, 3, size=(400, 6)).astype(np.float32)
    classes = rng.integers(-2, 3, size=(15, 6)).astype(np.float32)
    labels = rng.integers(0, 15, size=400)
    seen, unseen = np.array([0, 2, 3, 5, 7, 8, 11, 13]), np.array([1, 4, 6, 9, 10, 12, 14])
    best = BestScores.search(queries, classes, seen, unseen, backend=backend)
    matrix = queries @ classes.T
    for gamma in (-1.0, 0.0, 1.0, 2.5):
        assert gzsl(best, labels, seen, unseen, gamma) == gzsl(matrix, labels, seen, unseen, gamma)
    for a, b in zip(seen_unseen_curve(best, labels, seen, unseen), seen_unseen_curve(matrix, labels, seen, unseen)):
        np.testing.assert_array_equal(a, b)
    assert select_gamma(best, labels, seen, unseen) == select_gamma(matrix, labels, seen, unseen)
    with pytest.raises(PipelineError, match="best scores of 400 images"):
        gzsl(best, labels[:10], seen, unseen)


def test_select_gamma_picks_the_gamma_of_the_best_harmonic_mean():
    gamma, h = select_gamma(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN)
    assert gamma == pytest.approx(0.3)  # midpoint of d = 0.2 and d = 0.4
    assert h == pytest.approx(0.6)
    gamma, h = select_gamma(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN, gammas=[0.0, 0.12, 0.25])
    assert (gamma, h) == (0.25, pytest.approx(0.6))


def test_ausuc_of_the_hand_curve_is_the_area_of_its_steps():
    # steps: S 0-0.5 at U 0.75, S 0.5-1 at U 0.25
    assert ausuc(np.array(CURVE_S), np.array(CURVE_U)) == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    assert ausuc(np.array(CURVE_S[::-1]), np.array(CURVE_U[::-1])) == pytest.approx(0.5)


def test_ausuc_of_a_perfect_classifier_is_one():
    scores = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    s, u, _ = seen_unseen_curve(scores, np.arange(4), SEEN, UNSEEN)
    assert (s[0], u[0], s[-1], u[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert ausuc(s, u) == pytest.approx(1.0)


def test_ausuc_of_a_straight_line_is_its_trapezoid():
    assert ausuc(np.array([0.0, 0.4]), np.array([0.6, 0.2])) == pytest.approx(0.4 * 0.4)


def test_curve_points_and_plot_are_written_for_dvc(tmp_path):
    s, u, gammas = seen_unseen_curve(GZSL_SCORES, GZSL_LABELS, SEEN, UNSEEN)
    points = curve_points(s, u, gammas, tmp_path / "curve.json")
    assert points[0] == {"S": 1.0, "U": 0.0, "gamma": pytest.approx(-1.7)}
    assert json.loads((tmp_path / "curve.json").read_text()) == points
    png = plot_seen_unseen_curves([Curve("hand", s, u, (0.5, 0.5))], tmp_path / "plots" / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Queries are score rows against one-hot class embeddings, so inner products = the rows.
# Training classes 0, 1; test candidates 2..5.
HIT_SCORES = np.array([
    [0.9, 0.1, 0.8, 0.3, 0.2, 0.0],  # label 2: rank 0 among tests, rank 1 after train class 0
    [0.0, 0.7, 0.6, 0.1, 0.5, 0.2],  # label 4: rank 1 among tests, rank 2 after train class 1
    [0.0, 0.0, 0.1, 0.2, 0.3, 0.9],  # label 5: rank 0
    [0.0, 0.0, 0.1, 0.2, 0.3, 0.8],  # label 5: rank 0
])
HIT_LABELS = np.array([2, 4, 5, 5])


def test_hit_at_k_counts_the_label_among_the_first_k():
    topk = np.array([[2, 3, 4], [2, 4, 3], [5, 4, 3], [5, 4, 3]])
    assert hit_at_k(topk, HIT_LABELS, ks=(1, 2, 3)) == {"hit@1": 0.75, "hit@2": 1.0, "hit@3": 1.0}
    per_class = hit_at_k(topk, HIT_LABELS, ks=(1, 2), per_class=True)  # classes 2: 1, 4: 0, 5: 1
    assert per_class == {"hit@1": pytest.approx(2 / 3), "hit@2": 1.0}
    with pytest.raises(PipelineError, match="hit@5 needs 5"):
        hit_at_k(topk, HIT_LABELS, ks=(1, 5))


def test_hit_at_k_with_scores_ranks_ties_pessimistically_as_dgp():
    # image 0: its class 2 ties with class 3 for first place; image 1: class 4 is second, tied with class 5
    topk = np.array([[3, 2, 4], [2, 4, 5]])
    scores = np.array([[0.5, 0.5, 0.1], [0.9, 0.4, 0.4]])
    labels = np.array([2, 4])
    assert hit_at_k(topk, labels, ks=(1, 2)) == {"hit@1": 0.0, "hit@2": 1.0}  # list order: class 2 second
    # DGP: rank = number of classes scoring >= the true class: image 0 -> 2, image 1 -> 3
    assert hit_at_k(topk, labels, ks=(1, 2), scores=scores) == {"hit@1": 0.0, "hit@2": 0.5}
    tied_first = np.array([[2, 3, 4]])  # the true class listed first but tied: still not a hit@1
    assert hit_at_k(tied_first, np.array([2]), ks=(1,), scores=np.array([[0.5, 0.5, 0.1]])) == {"hit@1": 0.0}
    # a crafted embedding tie through the search: two identical class embeddings
    classes = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    queries = np.array([[1.0, 0.1], [0.1, 1.0]])
    got = hit_at_k_over(queries, classes, np.array([0, 2]), np.arange(3), np.empty(0, np.int64), False, ks=(1, 2))
    assert got == {"hit@1": 0.5, "hit@2": 1.0}


def test_hit_at_k_over_candidates_with_and_without_training_classes():
    classes, test, train = np.eye(6), np.arange(2, 6), np.array([0, 1])
    without = hit_at_k_over(HIT_SCORES, classes, HIT_LABELS, test, train, include_train=False, ks=(1, 2, 3))
    assert without == {"hit@1": 0.75, "hit@2": 1.0, "hit@3": 1.0}
    with_train = hit_at_k_over(HIT_SCORES, classes, HIT_LABELS, test, train, include_train=True, ks=(1, 2, 3))
    assert with_train == {"hit@1": 0.5, "hit@2": 0.75, "hit@3": 1.0}
    with pytest.raises(PipelineError, match="not among the candidate"):
        hit_at_k_over(HIT_SCORES, classes, np.array([2, 4, 5, 1]), test, train, include_train=True)
