"""Benchmark training: wall time and peak memory of each model's fit on CUB-sized cached features.

CUB-sized: 7057 train images × 2048-d float16 features (plus 512-d CLIP image features for
CFZSL), 200 classes × 312 attributes (150 seen), 512-d CLIP text embeddings; synthetic values
drawn so the problem is learnable. Each model is fitted once with its default hyperparameters,
in its own process, so ``peak_rss_mib`` is that fit's process peak (``data_rss_mib``: the peak
before fitting, i.e. torch + data). Also reports the unseen-class accuracy as a sanity check.
Target: every fit under 60 s on 2 CPU cores. Scoring (FAISS vs matrix product) is timed by
``benchmarks/score.py``; ``--score`` runs it too and nests its JSON under ``"scoring"``.

``--attention`` also times one epoch of the grid models (msdn, drmn) on a CUB-sized grid store
(7057 × 196 × 2048 float16, 5.7 GB allocated, 312 attributes with 300-d name vectors): the
epoch runs over the first ``--grid-images`` rows (the only ones written), and
``epoch_s_projected`` scales it to 7057 images; peak RSS shows memory does not follow the file.

Prints one JSON object. Run from the repository root: ``python benchmarks/train.py [--score]``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

N_TRAIN, N_CLASSES, N_SEEN, N_ATTRIBUTES, DIM, CLIP_DIM = 7057, 200, 150, 312, 2048, 512
MODELS = ("eszsl", "joint_gcn", "gcn_regression", "cfzsl", "clip_prompt")


def _fit_one(name: str) -> dict:
    """Fit ``name`` on the CUB-sized problem in this process and measure it."""
    import numpy as np

    from pipeline.models import make_model
    from pipeline.models.base import Semantics, Split

    rng = np.random.default_rng(0)
    attrs = rng.random((N_CLASSES, N_ATTRIBUTES)).astype(np.float32)
    attrs /= np.linalg.norm(attrs, axis=1, keepdims=True)
    seen = np.sort(rng.choice(N_CLASSES, N_SEEN, replace=False))
    unseen = np.setdiff1d(np.arange(N_CLASSES), seen)

    def images(classes: np.ndarray, n: int) -> Split:
        labels = classes[rng.integers(0, len(classes), n)]
        feats = np.maximum(attrs[labels] @ proj * 3 + rng.normal(size=(n, DIM)), 0).astype(np.float16)
        clip = (attrs[labels] @ clip_proj + rng.normal(size=(n, CLIP_DIM))).astype(np.float16)
        return Split(feats, labels, {"clip": clip})

    proj = rng.normal(size=(N_ATTRIBUTES, DIM)).astype(np.float32)
    clip_proj = rng.normal(size=(N_ATTRIBUTES, CLIP_DIM)).astype(np.float32)
    text = attrs @ clip_proj
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    train, test = images(seen, N_TRAIN), images(unseen, 2000)
    semantics = Semantics(attrs, {"clip": text})
    data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = make_model(name)
    start = time.perf_counter()
    model.fit(train, seen, semantics, 0)
    fit_s = time.perf_counter() - start
    scores = model.image_embeddings(test) @ model.class_embeddings(semantics)[unseen].T
    predicted = unseen[scores.argmax(1)]
    accuracy = float(np.mean([np.mean(predicted[test.labels == c] == c) for c in unseen]))
    return {"fit_s": round(fit_s, 2), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "data_rss_mib": round(data_rss), "unseen_accuracy": round(accuracy, 4), "chance": 1 / len(unseen)}


def _grid_epoch(name: str, images: int) -> dict:
    """One epoch of ``name`` over ``images`` rows of a CUB-sized grid store, in this process."""
    import tempfile

    import numpy as np

    from pipeline.datasets.base import ImageDataset
    from pipeline.grid import GridSource
    from pipeline.models import make_model
    from pipeline.models.base import Semantics, Split
    from pipeline.store import FeatureWriter, create_store

    regions, n, dim = 196, N_TRAIN, DIM
    rng = np.random.default_rng(0)
    attrs = rng.random((N_CLASSES, N_ATTRIBUTES)).astype(np.float32)
    seen = np.arange(N_SEEN)
    labels = seen[rng.integers(0, N_SEEN, n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.h5"
        data = ImageDataset("cub-sized", Path(tmp), [f"{i}.jpg" for i in range(n)], labels,
                            [str(c) for c in range(N_CLASSES)])
        create_store(path, data, dim, "float16", (regions, dim), {})
        with FeatureWriter(path) as w:
            for lo in range(0, images, 256):
                rows = np.arange(lo, min(lo + 256, images))
                w.write(rows, rng.random((len(rows), dim), dtype=np.float32),
                        rng.random((len(rows), regions, dim), dtype=np.float32).astype(np.float16))
        rows = np.arange(images)
        pooled = rng.random((images, dim), dtype=np.float32)
        train = Split(pooled, labels[:images], grid=GridSource(path, rows))
        semantics = Semantics(attrs, attribute_vectors=rng.normal(size=(N_ATTRIBUTES, 300)).astype(np.float32))
        model = make_model(name, epochs=1)
        data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        model.fit(train, np.unique(labels[:images]), semantics, 0)
        epoch_s = time.perf_counter() - start
        file_gib = (path.stat().st_size) / 2**30
    return {"images": images, "epoch_s": round(epoch_s, 1), "images_per_s": round(images / epoch_s, 1),
            "epoch_s_projected": round(epoch_s * N_TRAIN / images, 1), "grid_file_gib": round(file_gib, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "data_rss_mib": round(data_rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--score", action="store_true", help="also run benchmarks/score.py")
    parser.add_argument("--attention", action="store_true", help="also time an epoch of msdn and drmn on grids")
    parser.add_argument("--grid-images", type=int, default=512, help="rows of the grid store the epoch covers")
    parser.add_argument("--fit-one", help=argparse.SUPPRESS)
    parser.add_argument("--grid-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_one:
        print(json.dumps(_fit_one(args.fit_one)))
        return
    if args.grid_one:
        print(json.dumps(_grid_epoch(args.grid_one, args.grid_images)))
        return
    import torch

    result: dict = {"threads": torch.get_num_threads(), "train_images": N_TRAIN, "feature_dim": DIM,
                    "classes": N_CLASSES, "attributes": N_ATTRIBUTES, "models": {}}
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--fit-one", name], capture_output=True, text=True, check=True)
        result["models"][name] = json.loads(out.stdout.splitlines()[-1])
        print(f"{name}: {result['models'][name]}", file=sys.stderr)
    if args.attention:
        result["attention"] = {}
        for name in ("msdn", "drmn"):
            out = subprocess.run([sys.executable, __file__, "--grid-one", name, "--grid-images", str(args.grid_images)],
                                 capture_output=True, text=True, check=True)
            result["attention"][name] = json.loads(out.stdout.splitlines()[-1])
            print(f"{name}: {result['attention'][name]}", file=sys.stderr)
    if args.score:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score.py")], capture_output=True, text=True,
                             check=True)
        result["scoring"] = json.loads(out.stdout)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
