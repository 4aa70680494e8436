"""Nearest-class search: each image's top-k classes by inner product of embeddings.

Models give image embeddings [N, J] and class embeddings [C, J] (``pipeline.models.base``);
an image's score for a class is their inner product (callers L2-normalise both for cosine).
Images embedded as K vectors ([N, K, J], SDL) score a class by the maximum over their K inner
products: :func:`search` then finds each vector's top-k and merges them, which is exact (a
class in an image's top-k is in the top-k of the vector that gives its maximum).

* :func:`search` returns the k best classes of every image without ever holding the N x C
  score matrix: queries go through in blocks of ``batch`` rows.
* :func:`scores` returns the full N x C matrix, for small C (GZSL curves on AWA2, CUB, SUN).

Backends of :func:`search` (the same top-k up to float rounding):

* ``"faiss"``: a FAISS ``IndexFlatIP``, on the GPU when ``faiss.get_num_gpus() > 0``;
* ``"torch"``: ``torch.mm`` of a block of queries with all classes, then ``torch.topk``;
* ``"numpy"``: ``@`` of a block of queries with all classes, then ``np.argpartition``.

``backend="auto"`` (:func:`choose_backend`) takes FAISS on a GPU; on a CPU, FAISS from 1000
classes and 1000 queries, torch for fewer queries, numpy for fewer classes. The rule comes
from ``benchmarks/score.py`` on a 2-core CPU (dim 512, k=20, single-threaded medians, the
least disturbed by other work on the machine; seconds for FAISS / numpy / torch / search)::

    1K classes,  10K queries   0.093 / 0.111 / 0.121 / 0.096
    1K classes, 100K queries   0.92  / 1.10  / 1.37  / 0.96
    21K classes, 10K queries   1.97  / 8.9   / 2.8   / 1.96
    21K classes, 100K queries  18.9  / 48.6  / 22.3  / 14.1    (busy machine; CPU s: 14.4 / 32.7 / 19.5 / 13.9)
    21K classes, 100 queries   0.33  / 0.031 / 0.026 / 0.021   (FAISS slow below ~300 queries)
    50 classes,  10K queries   0.016 / 0.010 / 0.013 / 0.012

FAISS's BLAS product and heap selection beat a product + top-k once both sides are large;
with few queries it takes a slow non-BLAS path, and with few classes its fixed costs show.
Below ~10 ms, search's own checks and tie handling cost up to ~0.3 ms more than a bare
product + top-k. With 2 threads the order was the same (search 0.63-1.03x the faster of
numpy and torch, medians), though other work on the machine made those timings noisy.
FAISS calls get blocks of ``FAISS_BATCH`` queries of equal sizes (no small last block).

Ties: within the returned k, equal scores are ordered by increasing class index, and a class
tied with the k-th score is returned before any tied class with a larger index: the result is
``np.argsort(-row_scores, kind="stable")[:k]`` of the scores as computed (which can differ
from numpy's own products in the last bit).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError

BACKENDS = ("auto", "faiss", "torch", "numpy")
BLOCK_BYTES = 128 << 20  # memory of one block of scores (and numpy's sort buffers) at most
FAISS_MIN_CLASSES = 1000  # auto: FAISS on a CPU from this many classes ...
FAISS_MIN_QUERIES = 1000  # ... and this many queries (fewer: torch); fewer classes: numpy
FAISS_BATCH = 16384  # queries per FAISS call (it blocks them itself; fewer than ~300 are slow)
_GPU_MAX_K = 2048  # FAISS GPU flat indexes return at most 2048 neighbours


def search(
    queries: np.ndarray,
    classes: np.ndarray,
    k: int,
    class_bias: np.ndarray | None = None,
    gpu: bool | None = None,
    batch: int | None = None,
    candidates: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes of each query by inner product.

    Args:
        queries: [N, J] image embeddings.
        classes: [C, J] class embeddings.
        k: classes returned per query. When k exceeds the number of candidate classes, the
            extra columns hold index -1 and score -inf (as FAISS does).
        class_bias: [C] constant added to every score of a class (calibrated stacking:
            ``-gamma * is_seen``). Searched exactly: for FAISS the query gets a column of ones
            and the class a column holding its bias; numpy and torch add it to their scores.
        gpu: None uses a GPU when FAISS sees one; True requires one; False stays on the CPU.
        batch: queries per block. Default: ``FAISS_BATCH`` for FAISS; for numpy and torch at
            most 4096 and what ``BLOCK_BYTES`` of scores and sort buffers allow.
        candidates: global class indices (rows of ``classes``) to search among; the returned
            indices are still global. None searches all classes.
        backend: ``"auto"`` (:func:`choose_backend`), ``"faiss"``, ``"torch"`` or ``"numpy"``.

    Returns:
        scores [N, k] float32 (best first) and indices [N, k] int64 into ``classes``.

    ``queries`` may be [N, K, J]: K vectors per image, a class scored by their maximum.
    """
    if np.ndim(queries) == 3:
        n, n_vectors, dim = np.shape(queries)
        s, i = search(np.reshape(queries, (n * n_vectors, dim)), classes, k, class_bias, gpu, batch, candidates,
                      backend)
        return _merge_max(s.reshape(n, n_vectors * k), i.reshape(n, n_vectors * k), k)
    queries, classes, class_bias, rows = _checked(queries, classes, k, class_bias, candidates)
    if rows is not None:
        classes = classes[rows]
        class_bias = None if class_bias is None else class_bias[rows]
    n, c = len(queries), len(classes)
    use_gpu = _use_gpu(gpu)
    backend = choose_backend(n, c, use_gpu) if backend == "auto" else backend
    if backend not in BACKENDS:
        raise PipelineError(f"search: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kk = min(k + 1, c)  # one more than k shows whether the k-th place is tied
    if batch is None:
        bytes_per_score = 12 if backend == "numpy" else 4  # numpy: the scores and argpartition's int64 order
        batch = FAISS_BATCH if backend == "faiss" else max(1, min(4096, BLOCK_BYTES // (bytes_per_score * c or 1)))

    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_index = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or c == 0:
        return out_scores, out_index
    blocks = {"faiss": _faiss_blocks, "torch": _torch_blocks, "numpy": _numpy_blocks}[backend]
    m = min(k, c)
    for start, values, index, full in blocks(queries, classes, class_bias, kk, _bounds(n, batch), use_gpu):
        _check_finite(values, start, classes, index)
        s, i = _exact_ties(values, index, m, c, full)
        out_scores[start : start + len(s), :m] = s
        out_index[start : start + len(s), :m] = i
    if rows is not None:
        found = out_index >= 0
        out_index[found] = rows[out_index[found]]
    return out_scores, out_index


def choose_backend(n_queries: int, n_classes: int, gpu: bool = False) -> str:
    """The backend ``search(backend="auto")`` uses: FAISS on a GPU; on a CPU FAISS from
    ``FAISS_MIN_CLASSES`` classes and ``FAISS_MIN_QUERIES`` queries, torch for fewer queries,
    numpy for fewer classes (measurements in the module docstring)."""
    if gpu:
        return "faiss"
    if n_classes < FAISS_MIN_CLASSES:
        return "numpy"
    return "faiss" if n_queries >= FAISS_MIN_QUERIES else "torch"


def scores(queries: np.ndarray, classes: np.ndarray, max_gib: float = 4.0) -> np.ndarray:
    """[N, C] float32 matrix of inner products ``queries @ classes.T`` (for [N, K, J] queries,
    the maximum over the K vectors, computed in blocks of ``BLOCK_BYTES``).

    Refuses (PipelineError) when the matrix would exceed ``max_gib`` GiB: use :func:`search`.
    """
    n, n_vectors = len(queries), 1
    if np.ndim(queries) == 3:
        n_vectors = np.shape(queries)[1]
        queries = np.reshape(queries, (n * n_vectors, np.shape(queries)[2]))
    queries, classes, _, _ = _checked(queries, classes, 1, None, None)
    gib = n * len(classes) * 4 / (1 << 30)
    if gib > max_gib:
        raise PipelineError(
            f"scores: a {n} x {len(classes)} matrix needs {gib:.1f} GiB (limit {max_gib}); "
            "use pipeline.scoring.search for the top-k classes"
        )
    if n_vectors == 1:
        result = queries @ classes.T
    else:
        result = np.empty((n, len(classes)), dtype=np.float32)
        step = max(1, BLOCK_BYTES // (4 * n_vectors * max(1, len(classes))))
        for start in range(0, n, step):
            block = queries[start * n_vectors : (start + step) * n_vectors] @ classes.T
            result[start : start + step] = block.reshape(-1, n_vectors, len(classes)).max(axis=1)
    _check_finite(result, 0, classes)
    return result


def _merge_max(values: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k distinct classes of each row of (score, class) candidates, a class scored by its
    best candidate; ties by increasing class index, missing places as (-inf, -1)."""
    by_class = np.lexsort((-values, index))  # class ascending, each class's best score first
    values, index = np.take_along_axis(values, by_class, 1), np.take_along_axis(index, by_class, 1)
    repeat = np.zeros_like(index, dtype=bool)
    repeat[:, 1:] = index[:, 1:] == index[:, :-1]
    values = np.where(repeat | (index < 0), -np.inf, values).astype(np.float32)
    best = np.lexsort((index, -values))[:, :k]
    values, index = np.take_along_axis(values, best, 1), np.take_along_axis(index, best, 1)
    return values, np.where(np.isneginf(values), -1, index)


def _check_finite(values: np.ndarray, start: int, classes: np.ndarray, index: np.ndarray | None = None) -> None:
    """Refuse non-finite scores, naming their cause: a non-finite class row, else the first
    query row concerned (non-finite, or so large that products overflow)."""
    if np.isfinite(values).all() and (index is None or index.min(initial=0) >= 0):
        return
    _check_classes(classes)
    bad = ~np.isfinite(values).all(axis=1)
    if index is not None:
        bad |= (index < 0).any(axis=1)  # FAISS skips NaN scores: slots left at index -1
    raise PipelineError(
        f"scoring: query row {start + int(np.argmax(bad))} gives non-finite scores; drop non-finite rows first "
        "(features of failed images are NaN: keep rows with ok=True)"
    )


def _check_classes(classes: np.ndarray) -> None:
    bad = ~np.isfinite(classes).all(axis=1)
    if bad.any():
        raise PipelineError(f"scoring: class row {int(np.argmax(bad))} is not finite ({int(bad.sum())} such rows)")


def _checked(queries, classes, k, class_bias, candidates):
    """Inputs as C-contiguous float32 (bias float32, candidates int64), after shape checks."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    classes = np.ascontiguousarray(classes, dtype=np.float32)
    if queries.ndim != 2 or classes.ndim != 2 or queries.shape[1] != classes.shape[1]:
        raise PipelineError(
            f"scoring: queries {queries.shape} and classes {classes.shape} must be [N, J] and [C, J] with the same J"
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise PipelineError(f"search: k must be a positive integer, got {k!r}")
    if class_bias is not None:
        class_bias = np.ascontiguousarray(class_bias, dtype=np.float32)
        if class_bias.shape != (len(classes),) or not np.isfinite(class_bias).all():
            raise PipelineError(f"search: class_bias must be {len(classes)} finite values, got {class_bias.shape}")
    if candidates is not None:
        if np.ndim(candidates) != 1:
            raise PipelineError(f"search: candidates must be a 1-D array of class indices, got {np.shape(candidates)}")
        candidates = np.unique(np.asarray(candidates, dtype=np.int64))  # sorted: ties stay by global index
        if candidates.size and (candidates[0] < 0 or candidates[-1] >= len(classes)):
            raise PipelineError(f"search: candidates must be class indices in [0, {len(classes)})")
    return queries, classes, class_bias, candidates


def _use_gpu(gpu: bool | None) -> bool:
    if gpu is False:
        return False
    import faiss

    # faiss-gpu imports on machines without a GPU; only index_cpu_to_gpu fails there
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpu and n_gpus == 0:
        raise PipelineError("search: gpu=True but FAISS sees no GPU; use faiss-gpu on a CUDA machine or gpu=None")
    return n_gpus > 0


def _bounds(n: int, batch: int) -> list[tuple[int, int]]:
    """Blocks of at most ``batch`` rows, of equal sizes (no small last block: FAISS is slow on those)."""
    edges = np.linspace(0, n, -(-n // batch) + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _numpy_blocks(queries, classes, class_bias, kk, bounds, use_gpu):
    """Yield (start, values [b, kk] best first, indices [b, kk], full score rows) per block."""
    for start, stop in bounds:
        block = queries[start:stop] @ classes.T
        if class_bias is not None:
            block += class_bias
        c = block.shape[1]
        if kk < c:
            index = np.argpartition(block, c - kk, axis=1)[:, c - kk :]
        else:
            index = np.broadcast_to(np.arange(c), block.shape)
        order = np.argsort(_rows_take(block, index), axis=1)[:, ::-1]  # best first; _exact_ties orders ties
        index = _rows_take(index, order)
        yield start, _rows_take(block, index), index, lambda rows, block=block: block[rows]


def _rows_take(array: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(array, columns, 1)`` for 2-D arrays, through flat indices (twice as fast)."""
    return np.take(array, columns + np.arange(len(array))[:, None] * array.shape[1])


def _torch_blocks(queries, classes, class_bias, kk, bounds, use_gpu):
    """As :func:`_numpy_blocks` with ``torch.mm`` and ``torch.topk``."""
    classes_t = torch.from_numpy(_writable(classes)).T
    bias = None if class_bias is None else torch.from_numpy(_writable(class_bias))
    for start, stop in bounds:
        block = torch.from_numpy(_writable(queries[start:stop])) @ classes_t
        if bias is not None:
            block += bias
        values, index = torch.topk(block, kk, dim=1)
        yield start, values.numpy(), index.numpy(), lambda rows, block=block.numpy(): block[rows]


def _writable(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (e.g. memory-mapped): copy those."""
    return array if array.flags.writeable else array.copy()


def _faiss_blocks(queries, classes, class_bias, kk, bounds, use_gpu):
    """As :func:`_numpy_blocks` with a FAISS ``IndexFlatIP`` (the bias as an extra column)."""
    import faiss

    _check_classes(classes)  # FAISS would skip a NaN class silently (numpy and torch rank NaN first)
    if class_bias is not None:
        classes = np.hstack([classes, class_bias[:, None]])
    index = faiss.IndexFlatIP(classes.shape[1])
    index.add(classes)
    if use_gpu and kk <= _GPU_MAX_K:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    for start, stop in bounds:
        q = queries[start:stop]
        if class_bias is not None:
            q = np.hstack([q, np.ones((len(q), 1), np.float32)])
        values, ids = index.search(q, kk)
        yield start, values, ids, lambda rows, q=q: q[rows] @ classes.T


def _exact_ties(values, index, k, n_classes, full_rows):
    """Reduce a top-kk (kk = k + 1, or every class when there are fewer; best first) to the
    top-k with ties ordered by increasing class index.

    Rows with equal scores among their first kk are re-ordered; a row whose k-th score equals
    its (k+1)-th may have tied classes that were not fetched, and is re-ranked from its full
    row of scores ``full_rows(rows)``.
    """
    kk = values.shape[1]
    s, i = values[:, :k].astype(np.float32), index[:, :k].astype(np.int64)
    equal = values[:, 1:] == values[:, :-1]
    tied = np.flatnonzero(equal.any(axis=1)) if equal.any() else ()
    if len(tied):
        order = np.lexsort((index[tied], -values[tied]), axis=1)[:, :k]
        s[tied], i[tied] = np.take_along_axis(values[tied], order, 1), np.take_along_axis(index[tied], order, 1)
    if kk < n_classes and len(tied):
        unresolved = np.flatnonzero(values[:, k] == values[:, k - 1])
        if unresolved.size:
            full = full_rows(unresolved)
            top = np.argsort(-full, axis=1, kind="stable")[:, :k]
            s[unresolved], i[unresolved] = np.take_along_axis(full, top, 1), top
    return s, i
