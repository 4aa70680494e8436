"""Benchmark multi-label ZSL (SDL) at NUS-WIDE size: training time per epoch, evaluation time, memory.

NUS-WIDE-sized: 161,789 train and 107,859 test images of 2048-d float16 pooled features (ResNet
size), 1006 tags (925 seen, 81 unseen) with 300-d tag vectors (the real NUS-WIDE word vectors
when ``../shared`` is present, else Gaussian ones). Each image gets 1-6 tags; its features are
a noisy random projection of the sum of its tag vectors, so the problem is learnable.

For each K in ``--ks``: one training epoch of SDL (pooled head, default batch size) on all train
images, timed (``epoch_s``; a full fit is ``epochs`` x that), then ZSL + GZSL evaluation of the
result on the test images: embeddings [N, K, 300], the [N, 1006] score matrix for mAP, FAISS
top-k, metrics (``evaluate_s``). ``peak_rss_mib`` is the process peak (data included).

Prints one JSON object. Run from the repository root: ``python benchmarks/multilabel.py``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

# isort: split
import numpy as np  # noqa: E402

N_TRAIN, N_TEST, N_TAGS, N_UNSEEN, DIM, WORD_DIM = 161_789, 107_859, 1006, 81, 2048, 300
WORDVECS = ROOT.parent / "shared" / "data" / "nus_wide" / "wordvec_array.pickle"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(scale: float) -> tuple:
    from pipeline.inputs import Inputs
    from pipeline.models.base import Semantics, Split

    rng = np.random.default_rng(0)
    if WORDVECS.is_file():
        with open(WORDVECS, "rb") as f:
            vectors = np.asarray(pickle.load(f), dtype=np.float32).T
    else:
        vectors = rng.normal(size=(N_TAGS, WORD_DIM)).astype(np.float32)
    unseen = np.sort(rng.choice(N_TAGS, N_UNSEEN, replace=False))
    proj = (rng.normal(size=(WORD_DIM, DIM)) / np.sqrt(WORD_DIM)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def images(n: int, seen_only: bool) -> Split:
        pool = np.setdiff1d(np.arange(N_TAGS), unseen) if seen_only else np.arange(N_TAGS)
        tags = np.zeros((n, N_TAGS), bool)
        counts = rng.integers(1, 7, n)
        for i, c in enumerate(counts):
            tags[i, rng.choice(pool, c, replace=False)] = True
        features = np.empty((n, DIM), np.float16)
        for start in range(0, n, 16384):
            block = tags[start:start + 16384].astype(np.float32) @ unit @ proj
            features[start:start + 16384] = block + rng.normal(scale=0.5, size=block.shape)
        return Split(features, np.full(n, -1), tags=tags)

    n_train, n_test = int(N_TRAIN * scale), int(N_TEST * scale)
    splits = {"trainval": images(n_train, True), "test": images(n_test, False)}
    return Inputs([f"tag{i}" for i in range(N_TAGS)], splits, Semantics(vectors), unseen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 7], help="principal vectors per image")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the NUS-WIDE image counts")
    args = parser.parse_args()

    import torch

    from pipeline.models import make_model
    from pipeline.multilabel import evaluate_multilabel

    start = time.perf_counter()
    inputs = _data(args.scale)
    result: dict = {"train_images": len(inputs.splits["trainval"]), "test_images": len(inputs.splits["test"]),
                    "tags": N_TAGS, "unseen_tags": N_UNSEEN, "feature_dim": DIM, "word_dim": WORD_DIM,
                    "torch_threads": torch.get_num_threads(), "data_s": round(time.perf_counter() - start, 1),
                    "data_rss_mib": round(_peak_rss_mib()), "runs": []}
    seen = np.setdiff1d(np.arange(N_TAGS), inputs.unseen_tags)
    for k in args.ks:
        model = make_model("sdl", k=k, epochs=1, input="pooled")
        fit = model.fit(inputs.splits["trainval"], seen, inputs.semantics, 0)
        start = time.perf_counter()
        checkpoint = {"model": "sdl", "seen": seen.tolist()}
        metrics = evaluate_multilabel(model, checkpoint, inputs, Path("/tmp/benchmark_multilabel_plots"))
        result["runs"].append({
            "k": k, "epoch_s": round(fit["seconds"], 1), "loss": round(fit["loss"][-1], 4),
            "evaluate_s": round(time.perf_counter() - start, 1),
            "zsl_mAP": round(metrics["zsl"]["mAP"], 4), "zsl_mAP_random": round(metrics["zsl"]["mAP_random"], 4),
            "gzsl_mAP": round(metrics["gzsl"]["mAP"], 4), "zsl_F1@3": round(metrics["zsl"]["F1@3"], 4),
            "peak_rss_mib": round(_peak_rss_mib()),
        })
        print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
