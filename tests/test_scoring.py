"""Nearest-class search against brute force (numpy products and a stable argsort)."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.scoring import scores, search

BACKENDS = ["numpy", "torch", "faiss"]


def brute_force(queries, classes, k, bias=None, candidates=None):
    """Top-k by a full float64 product and a stable sort: ties to the lower class index."""
    full = queries.astype(np.float64) @ classes.astype(np.float64).T
    if bias is not None:
        full += bias
    pool = np.arange(len(classes)) if candidates is None else np.sort(candidates)
    top = pool[np.argsort(-full[:, pool], axis=1, kind="stable")[:, :k]]
    return np.take_along_axis(full, top, 1), top


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(257, 24)).astype(np.float32), rng.normal(size=(300, 24)).astype(np.float32),
            rng.normal(size=300).astype(np.float32), rng.choice(300, size=40, replace=False))


@pytest.fixture(scope="module")
def integer_data():
    """Small integers: float32 products are exact, and many scores tie."""
    rng = np.random.default_rng(1)
    return (rng.integers(-2, 3, size=(200, 5)).astype(np.float32), rng.integers(-2, 3, size=(60, 5)).astype(np.float32),
            rng.integers(-2, 3, size=60).astype(np.float32), rng.choice(60, size=25, replace=False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_candidates", [False, True])
def test_search_matches_brute_force_on_random_embeddings(random_data, backend, with_bias, with_candidates):
    queries, classes, bias, candidates = random_data
    bias, candidates = (bias if with_bias else None), (candidates if with_candidates else None)
    got_scores, got_index = search(queries, classes, 20, bias, candidates=candidates, backend=backend, batch=50)
    want_scores, want_index = brute_force(queries, classes, 20, bias, candidates)
    assert got_scores.dtype == np.float32 and got_index.dtype == np.int64
    np.testing.assert_array_equal(got_index, want_index)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 24, 59, 60])
def test_search_breaks_ties_by_lower_class_index(integer_data, backend, k):
    queries, classes, bias, candidates = integer_data
    for b, c in [(None, None), (bias, None), (bias, candidates)]:
        got_scores, got_index = search(queries, classes, k, class_bias=b, candidates=c, backend=backend, batch=64)
        want_scores, want_index = brute_force(queries, classes, k, b, c)
        m = min(k, len(want_index[0]))
        np.testing.assert_array_equal(got_index[:, :m], want_index)
        np.testing.assert_array_equal(got_scores[:, :m], want_scores)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_classes_and_a_zero_query_rank_the_lower_index_first(backend):
    classes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0]], np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    _, index = search(queries, classes, 3, backend=backend)
    np.testing.assert_array_equal(index, [[0, 2, 3], [0, 1, 2]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_the_candidates_pads_with_minus_one(backend):
    queries, classes = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
    got_scores, got_index = search(queries, classes, 5, candidates=np.array([2, 0]), backend=backend)
    np.testing.assert_array_equal(got_index, [[0, 2, -1, -1, -1], [0, 2, -1, -1, -1], [2, 0, -1, -1, -1]])
    assert np.isneginf(got_scores[:, 2:]).all()
    np.testing.assert_array_equal(got_scores[:, :2], [[1, 0], [0, 0], [1, 0]])


def test_class_bias_is_calibrated_stacking():
    # seen class 0 loses its lead once gamma = 0.3 is subtracted from it
    queries = np.array([[1.0, 0.8]], np.float32)
    classes = np.eye(2, dtype=np.float32)
    assert search(queries, classes, 1)[1][0, 0] == 0
    got_scores, got_index = search(queries, classes, 2, class_bias=np.array([-0.3, 0.0]))
    np.testing.assert_array_equal(got_index, [[1, 0]])
    np.testing.assert_allclose(got_scores, [[0.8, 0.7]], rtol=1e-6)


def test_scores_is_the_full_product():
    rng = np.random.default_rng(2)
    q, c = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    got = scores(q, c)
    assert got.dtype == np.float32 and got.shape == (7, 5)
    np.testing.assert_allclose(got, q @ c.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(PipelineError, match="use pipeline.scoring.search"):
        scores(q, c, max_gib=1e-9)


def test_bad_inputs_are_named():
    q, c = np.ones((4, 3), np.float32), np.ones((5, 3), np.float32)
    with pytest.raises(PipelineError, match="same J"):
        search(q, np.ones((5, 2)), 1)
    with pytest.raises(PipelineError, match="positive integer"):
        search(q, c, 0)
    with pytest.raises(PipelineError, match="class_bias must be 5"):
        search(q, c, 1, class_bias=np.zeros(4))
    with pytest.raises(PipelineError, match="candidates must be class indices"):
        search(q, c, 1, candidates=np.array([5]))
    with pytest.raises(PipelineError, match="unknown backend"):
        search(q, c, 1, backend="annoy")
    q[2, 1] = np.nan
    for backend in BACKENDS:
        with pytest.raises(PipelineError, match="query row 2 gives non-finite scores"):
            search(q, c, 2, backend=backend)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="this machine has a GPU")
def test_gpu_true_without_a_gpu_says_so():
    with pytest.raises(PipelineError, match="sees no GPU"):
        search(np.ones((2, 3)), np.ones((4, 3)), 1, gpu=True)


def test_gpu_false_and_no_queries():
    s, i = search(np.zeros((0, 3)), np.ones((4, 3)), 2, gpu=False)
    assert s.shape == (0, 2) and i.shape == (0, 2)


def test_auto_backend_rule():
    from pipeline.scoring import choose_backend

    assert choose_backend(100_000, 200) == "numpy"  # few classes
    assert choose_backend(100, 21_000) == "torch"  # few queries
    assert choose_backend(10_000, 1000) == "faiss"
    assert choose_backend(10, 10, gpu=True) == "faiss"


def test_backends_agree_on_repeated_classes_whose_scores_tie(random_data):
    queries, classes, bias, _ = random_data
    repeated, repeated_bias = np.vstack([classes] * 4), np.tile(bias, 4)  # class i ties with i + 300, ...
    _, want = brute_force(queries, repeated, 6, repeated_bias)
    assert (want[:, 1] == want[:, 0] + 300).all()
    for backend in ["auto", *BACKENDS]:  # auto: torch here (1200 classes, 257 queries)
        np.testing.assert_array_equal(search(queries, repeated, 6, repeated_bias, backend=backend)[1], want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_class_is_named(backend):
    classes = np.ones((5, 3), np.float32)
    classes[3, 0] = np.nan
    with pytest.raises(PipelineError, match="class row 3 is not finite"):
        search(np.ones((4, 3)), classes, 2, backend=backend)
