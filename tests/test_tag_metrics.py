"""Multi-label metrics against hand-computed cases: AP with ties, random-ranking AP, P/R/F1@k."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.tag_metrics import average_precision, expected_random_ap, map_report, precision_recall_f1_at_k


def test_average_precision_by_hand():
    # tag 0: ranking (0.9 +, 0.8 -, 0.7 +, 0.1 -): precisions at the positives 1/1 and 2/3 -> 5/6
    # tag 1: the only positive ranked last of four -> 1/4
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.05]])
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], bool)
    np.testing.assert_allclose(average_precision(scores, targets), [5 / 6, 1 / 4])


def test_ties_enter_together_and_do_not_depend_on_row_order():
    # all four images tie: one threshold, precision 2/4 at full recall -> AP 0.5 (not 1.0 or 0.42)
    scores = np.zeros((4, 1))
    targets = np.array([[1], [1], [0], [0]], bool)
    assert average_precision(scores, targets)[0] == pytest.approx(0.5)
    assert average_precision(scores, targets[::-1])[0] == pytest.approx(0.5)
    # a tie at the top: {+, -} at 0.9 then + at 0.5: recall 1/2 at precision 1/2, then 1 at 2/3 -> 7/12
    scores = np.array([[0.9], [0.9], [0.5]])
    for targets in (np.array([[1], [0], [1]], bool), np.array([[0], [1], [1]], bool)):
        assert average_precision(scores, targets)[0] == pytest.approx(7 / 12)


def test_tags_without_positives_are_nan_and_left_out_of_map():
    scores = np.array([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])
    targets = np.array([[1, 0, 0], [0, 0, 1]], bool)
    ap = average_precision(scores, targets)
    assert ap[0] == 1.0 and np.isnan(ap[1]) and ap[2] == 1.0
    report = map_report(scores, targets, np.array([0, 1, 2]))
    assert report["mAP"] == 1.0 and report["tags"] == 2 and report["tags_without_positives"] == 1
    with pytest.raises(PipelineError, match="no evaluated tag"):
        map_report(scores, targets, np.array([1]))


def test_sdl_convention_map_drops_images_without_positives_and_counts_empty_tags_as_zero():
    # tags 0, 1 evaluated; image 3 has no positive among them; tag 1 has no positive at all
    scores = np.array([[0.2, 0.5, 0.0], [0.8, 0.1, 0.0], [0.6, 0.3, 0.0], [0.9, 0.7, 0.0]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], bool)  # image 2: a positive of tag 2 only
    report = map_report(scores, targets, np.array([0, 1]))
    # ours: all four images ranked for tag 0 (0.9 -, 0.8 +, 0.6 -, 0.2 +): (1/2 + 2/4) / 2 = 0.5; tag 1 left out
    assert report["mAP"] == pytest.approx(0.5)
    # SDL: images 0 and 1 only (0.8 +, 0.2 +): AP 1; tag 1 counts 0 -> mean 0.5
    assert report["mAP_sdl"] == pytest.approx(0.5)
    scores[1, 0] = 0.1  # now tag 0 ranks image 0 (0.2) above image 1 (0.1): still all positives -> AP 1
    assert map_report(scores, targets, np.array([0, 1]))["mAP_sdl"] == pytest.approx(0.5)


def test_expected_random_ap_matches_the_mean_over_all_rankings():
    for n, p in ((4, 1), (5, 2), (6, 3), (3, 3)):
        aps = []
        for positives in itertools.combinations(range(n), p):
            targets = np.zeros((n, 1), bool)
            targets[list(positives)] = True
            aps.append(average_precision(-np.arange(n, dtype=float)[:, None], targets)[0])
        assert expected_random_ap(n, p) == pytest.approx(np.mean(aps))


def test_precision_recall_f1_at_k_by_hand():
    targets = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)  # image 2: no positives, left out
    topk = np.array([[0, 2, 1], [3, 2, 0], [0, 1, 2]])
    # k=1: image 0 right, image 1 wrong -> P 1/2, R 1/3; k=2: hits 1 + 1 -> P 2/4, R 2/3
    r1 = precision_recall_f1_at_k(topk, targets, 1)
    assert r1["P@1"] == pytest.approx(0.5) and r1["R@1"] == pytest.approx(1 / 3)
    assert r1["F1@1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    r2 = precision_recall_f1_at_k(topk, targets, 2)
    assert r2["P@2"] == pytest.approx(0.5) and r2["R@2"] == pytest.approx(2 / 3)
    r3 = precision_recall_f1_at_k(topk, targets, 3)
    assert r3["R@3"] == 1.0 and r3["P@3"] == pytest.approx(3 / 6)
    none = precision_recall_f1_at_k(np.array([[3], [3]]), targets[:2], 1)
    assert none["F1@1"] == 0.0


def test_fewer_candidates_than_k_count_as_k_equals_candidates():
    targets = np.array([[1, 0], [0, 1]], bool)
    topk = np.array([[0, 1, -1, -1, -1], [1, 0, -1, -1, -1]])  # two candidate tags, k=5
    r = precision_recall_f1_at_k(topk, targets, 5)
    assert r["P@5"] == pytest.approx(0.5) and r["R@5"] == 1.0
