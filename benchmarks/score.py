"""Benchmark nearest-class search: FAISS against a plain matrix product + top-k.

For every (classes, queries) size, on random L2-normalised embeddings (dim 512, k=20 by
default), times the median of ``--repeats`` runs of:

* ``faiss_s``: a FAISS ``IndexFlatIP`` (CPU, or GPU when FAISS sees one) searching all queries;
* ``numpy_s``: ``queries @ classes.T`` in blocks of 4096 queries, ``np.argpartition`` + sort of the k;
* ``torch_s``: ``torch.mm`` in the same blocks, ``torch.topk``;
* ``search_s``: ``pipeline.scoring.search`` as the pipeline calls it (backend ``"auto"``,
  the one it picks in ``search_backend``).

Runs of the methods are interleaved. ``*_s`` is the median, ``*_min_s`` the fastest run;
``search_vs_fastest_baseline`` = search / min(numpy, torch), of medians and of minima (<= 1
within noise is the goal). Each method also reports the median CPU seconds of this process
(``*_cpu_s``), its peak RSS above the process's RSS before it ran (``*_peak_extra_mib``) and
``*_others_cpu_s``: CPU seconds other processes used meanwhile (a busy machine makes timings
meaningless: with every core in use, threads wait on each other; single-threaded timings,
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1``, suffer less). Logs go to
stderr; stdout is one JSON object. Run from the repository root:
``python benchmarks/score.py --help``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

# isort: split
import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.measure import PeakMemory, busy_cpu_s  # noqa: E402
from pipeline.scoring import choose_backend, search  # noqa: E402

log = logging.getLogger("benchmarks.score")
BLOCK = 4096  # queries per block of the baselines: 4096 x 21K float32 = 328 MiB
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def numpy_topk(queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), BLOCK):
        block = queries[s : s + BLOCK] @ classes.T
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, part, 1), axis=1)
        out[s : s + BLOCK] = np.take_along_axis(part, order, 1)
    return out


def torch_topk(queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    classes_t = torch.from_numpy(classes).T
    for s in range(0, len(queries), BLOCK):
        out[s : s + BLOCK] = torch.topk(torch.from_numpy(queries[s : s + BLOCK]) @ classes_t, k, dim=1).indices.numpy()
    return out


def faiss_topk(queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(classes.shape[1])
    index.add(classes)
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index.search(queries, k)[1]


def time_methods(fns: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Per method: median and min seconds of ``repeats`` runs after one untimed warm-up, median
    CPU seconds, peak extra RSS, CPU seconds of other processes. Runs are interleaved (A B C, A B C,
    ...) so that a busy spell of the machine hits every method alike."""
    for fn in fns.values():
        fn()
    runs, cpu, others, peak = ({name: [] for name in fns} for _ in range(4))
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory(interval_s=0.02) as mem:
                busy0, cpu0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - cpu0)
                others[name].append(max(0.0, busy_cpu_s() - busy0 - cpu[name][-1]))
            peak[name].append(mem.extra_mib)
    row = {}
    for name in fns:
        row.update({f"{name}_s": round(statistics.median(runs[name]), 5), f"{name}_min_s": round(min(runs[name]), 5),
                    f"{name}_runs_s": [round(r, 5) for r in runs[name]],
                    f"{name}_cpu_s": round(statistics.median(cpu[name]), 5),
                    f"{name}_peak_extra_mib": max(peak[name]), f"{name}_others_cpu_s": round(sum(others[name]), 2)})
    return row


def embeddings(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 21000])
    parser.add_argument("--queries", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["faiss", "numpy", "torch", "search"],
                        choices=["faiss", "numpy", "torch", "search"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    rng = np.random.default_rng(0)
    methods = {
        "faiss": faiss_topk,
        "numpy": numpy_topk,
        "torch": torch_topk,
        "search": lambda q, c, k: search(q, c, k)[1],
    }
    queries_all = embeddings(max(args.queries), args.dim, rng)
    results = []
    for n_classes in args.classes:
        classes = embeddings(n_classes, args.dim, rng)
        for n_queries in args.queries:
            queries = queries_all[:n_queries]
            log.info("classes=%d queries=%d", n_classes, n_queries)
            fns = {name: partial(methods[name], queries, classes, args.k) for name in args.methods}
            row = {"classes": n_classes, "queries": n_queries, **time_methods(fns, args.repeats)}
            row["search_backend"] = choose_backend(n_queries, n_classes, faiss.get_num_gpus() > 0)
            if {"search", "numpy", "torch"} <= set(args.methods):
                row["search_vs_fastest_baseline"] = {
                    "median": round(row["search_s"] / min(row["numpy_s"], row["torch_s"]), 3),
                    "min": round(row["search_min_s"] / min(row["numpy_min_s"], row["torch_min_s"]), 3),
                }
            results.append(row)
            log.info("%s", row)

    print(json.dumps({
        "dim": args.dim, "k": args.k, "repeats": args.repeats, "baseline_block": BLOCK,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
                    "faiss_gpus": faiss.get_num_gpus(), "thread_env": {v: os.environ.get(v) for v in THREAD_ENV},
                    "faiss": faiss.__version__, "torch": torch.__version__, "numpy": np.__version__,
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
