"""Benchmark extraction under torchrun: one process against 2 (or more) ranks on the same images, and
the cost of joining shards.

Prints one JSON object to stdout (logs go to stderr):

* ``runs``: per number of processes, the wall time of the whole ``cli.py extract`` command (start-up,
  backbone load, extraction, join), ``images_per_s`` over it, and ``peak_rss_mib`` of the largest
  process (a rank; one process: itself);
* ``speedup``: images/s of the most ranks over one process (on a 2-core machine little gain is
  possible: the point is a small overhead, >= 0.9);
* ``join``: ``join_shards`` over ``--join-ranks`` generated shard stores holding ``--join-rows``
  rows of 512-d float16 features in all (no images), as virtual data sets and merged,
  in seconds and scaled to seconds per million rows;
* ``webdataset``: the same images as WebDataset tar shards: one process's ``images_per_s`` (against
  the folder copy's), and the listing rate of tar headers (``samples_per_s`` over ``--list-shards``
  generated shards of 1000 samples) with the listing time it projects for one of 8 ranks of a
  14 M-image collection.

    python benchmarks/extract_distributed.py [--images-per-class 40] [--ranks 2] [--join-rows 200000] \
        [--list-shards 20]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

# isort: split
import numpy as np  # noqa: E402

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.datasets import load_dataset  # noqa: E402
from pipeline.datasets.base import ImageDataset  # noqa: E402
from pipeline.datasets.synthetic import generate_synthetic, load_synthetic  # noqa: E402
from pipeline.datasets.webdataset import list_shard, write_webdataset  # noqa: E402
from pipeline.distributed import join_shards, shard_path, shard_rows, subset_rows  # noqa: E402
from pipeline.store import FeatureWriter, create_store  # noqa: E402

log = logging.getLogger("benchmarks.extract_distributed")


def timed_extract(ranks: int, root: Path, output: Path, args: argparse.Namespace,
                  dataset: str = "synthetic") -> dict[str, Any]:
    """Wall time, images/s and the largest process's peak RSS of one ``cli.py extract`` run."""
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc-per-node", str(ranks)]
    command = [*launcher, str(ROOT / "cli.py"), "extract", "--dataset", dataset, "--root", str(root),
               "--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--no-grid", "--output", str(output)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the maximum over every child so far
    n = len(load_dataset(dataset, root))
    return {"processes": ranks, "seconds": round(seconds, 2), "images": n, "images_per_s": round(n / seconds, 1),
            "peak_rss_mib": round(max(peak, before) / 1024, 1)}


def join_cost(work: Path, rows: int, world: int) -> dict[str, Any]:
    """Seconds of :func:`join_shards` (virtual and merged) over ``world`` generated shards of ``rows``
    rows of 512-d float16 features (ResNet-18's)."""
    backbone = load_backbone("resnet18", "none", 32)  # only its provenance and sizes are read
    dim = backbone.feature_dim
    dataset = ImageDataset("generated", work, [f"{i:08d}.jpg" for i in range(rows)], np.zeros(rows, np.int64), ["c"])
    blocks = shard_rows(rows, world, 1024)
    output = work / "joined.h5"
    rng = np.random.default_rng(0)
    for rank, (start, stop) in enumerate(blocks):
        shard = shard_path(output, rank, world)
        create_store(shard, subset_rows(dataset, start, stop), dim, "float16", None, {"dataset": "generated"})
        with FeatureWriter(shard) as writer:
            for lo in range(0, stop - start, 65536):
                n = min(65536, stop - start - lo)
                writer.write(np.arange(lo, lo + n), rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16))
            writer.finalize({})
    out: dict[str, Any] = {"rows": rows, "dim": dim, "shards": world}
    for mode, merge in (("virtual", False), ("merge", True)):
        start = time.perf_counter()
        join_shards(dataset, backbone, output, blocks, merge=merge)
        seconds = time.perf_counter() - start
        out[f"{mode}_s"] = round(seconds, 2)
        out[f"{mode}_s_per_million_rows"] = round(seconds * 1e6 / rows, 1)
        output.unlink()
    return out


def listing_rate(work: Path, shards: int) -> dict[str, Any]:
    """Samples per second :func:`list_shard` reads from the headers of ``shards`` generated tar shards of
    1000 samples (a 2 KiB stand-in image + ``.cls`` each), and the listing time that projects for one of
    8 ranks of 14 M images."""
    per_shard = 1000
    n = shards * per_shard
    source = ImageDataset("generated", work, ["image.jpg"] * n, np.zeros(n, np.int64), ["c"])
    work.mkdir()
    (work / "image.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    paths = write_webdataset(source, work / "wds", per_shard)
    start = time.perf_counter()
    n = sum(len(list_shard(path, 1)[0]) for path in paths)
    rate = n / (time.perf_counter() - start)
    return {"samples": n, "samples_per_s": round(rate), "projected_s_for_1_of_8_ranks_of_14M": round(14e6 / 8 / rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--join-rows", type=int, default=200_000)
    parser.add_argument("--join-ranks", type=int, default=8)
    parser.add_argument("--list-shards", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "synthetic"
        generate_synthetic(root, images_per_class=args.images_per_class, image_size=64, seed=0)
        runs = [timed_extract(ranks, root, work / f"features-{ranks}.h5", args) for ranks in (1, args.ranks)]
        join = join_cost(work / "join", args.join_rows, args.join_ranks)
        write_webdataset(load_synthetic(root), work / "wds", per_shard=1000)
        tars = timed_extract(1, work / "wds", work / "features-wds.h5", args, dataset="webdataset")
        webdataset = {"images_per_s": tars["images_per_s"], "folder_images_per_s": runs[0]["images_per_s"],
                      **listing_rate(work / "listing", args.list_shards)}
    print(json.dumps({"cpu_count": os.cpu_count(), "runs": runs,
                      "speedup": round(runs[1]["images_per_s"] / runs[0]["images_per_s"], 3), "join": join,
                      "webdataset": webdataset}))


if __name__ == "__main__":
    main()
