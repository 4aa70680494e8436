"""Benchmark feature extraction: full ``pipeline.extract.extract`` against the backbone alone.

Prints one JSON object to stdout (logs and progress go to stderr):

* ``full_images_per_s``: ``extract()`` end to end into a fresh HDF5 store (loader start-up,
  decoding, forward pass, writes, finalisation; backbone construction excluded);
* ``forward_images_per_s``: ``DeviceBackbone`` over the same batches, decoded beforehand into
  memory, outputs copied to the CPU;
* ``ratio`` = full / forward (target >= 0.9: the loader hides decoding);
* ``loader_images_per_s`` and ``loader_first_batch_s``: ``image_batches`` alone, same settings;
* peak memory of the first full run (main process, decoding workers, CUDA);
* CPU seconds of each phase's fastest run, ``others`` being other processes' (a busy machine
  invalidates the figures).

Both phases see the same images on the same device after one warm-up batch of their own; with
``--repeats N`` their timed runs alternate and the fastest of each is reported.
Run from the repository root: ``python benchmarks/extract.py --help``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

# isort: split
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.measure import MIB, PeakMemory, busy_cpu_s  # noqa: E402
from pipeline.backbones import Backbone, load_backbone  # noqa: E402
from pipeline.choices import BACKBONE_NAMES, is_backbone  # noqa: E402
from pipeline.datasets.base import ImageDataset  # noqa: E402
from pipeline.datasets.folder import load_folder  # noqa: E402
from pipeline.datasets.synthetic import FACTORS, generate_synthetic, load_synthetic  # noqa: E402
from pipeline.device import resolve_device  # noqa: E402
from pipeline.extract import DeviceBackbone, ImageFiles, extract, image_batches  # noqa: E402

log = logging.getLogger("benchmarks.extract")
JPEG_SIZE = (500, 375)  # width, height: typical of CUB-200 photos
JPEG_NOISE = 6.0  # grey levels of per-pixel noise, so upscaled images compress like photos


class CpuTime:
    """CPU seconds over a block: user and system of this process and of the children reaped
    in it (decoding workers), and ``others``: busy CPU time of every other process."""

    @staticmethod
    def _now() -> tuple[resource.struct_rusage, resource.struct_rusage, float]:
        return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s()

    def __enter__(self) -> CpuTime:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        (s0, c0, busy0), (s1, c1, busy1) = self._start, self._now()
        seconds = {"main_user": s1.ru_utime - s0.ru_utime, "main_sys": s1.ru_stime - s0.ru_stime,
                   "workers_user": c1.ru_utime - c0.ru_utime, "workers_sys": c1.ru_stime - c0.ru_stime}
        seconds["others"] = max(0.0, busy1 - busy0 - sum(seconds.values()))
        self.result = {k: round(v, 2) for k, v in seconds.items()}


def _subset(data: ImageDataset, n: int, name: str) -> ImageDataset:
    """The first ``n`` images of ``data``, without splits."""
    if len(data) < n:
        raise SystemExit(f"{data.name} has {len(data)} images, fewer than the {n} asked for")
    return dataclasses.replace(data, name=name, image_ids=data.image_ids[:n], labels=data.labels[:n], splits={})


def make_dataset(source: str, n: int, out_dir: Path) -> ImageDataset:
    """``n`` images: the built-in synthetic PNGs, JPEG photos made from them (``jpeg``), or the first
    ``n`` (sorted paths) of a folder of real photos (``folder:PATH``, ``PATH/<class>/<image>``)."""
    if source.startswith("folder:"):
        return _subset(load_folder(Path(source.removeprefix("folder:")), name="folder"), n, "folder")
    per_class = max(2, math.ceil(n / math.prod(len(v) for v in FACTORS.values())))
    generate_synthetic(out_dir / "synthetic", images_per_class=per_class)
    synthetic = _subset(load_synthetic(out_dir / "synthetic"), n, "synthetic")
    if source == "synthetic":
        return synthetic
    root = out_dir / f"jpeg{n}"
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / synthetic.classes[synthetic.labels[i]].replace(" ", "_") / f"{i:05d}.jpg"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(synthetic.path(i)) as img:
            big = np.asarray(img.convert("RGB").resize(JPEG_SIZE, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, JPEG_NOISE, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)
    return _subset(load_folder(root, name="jpeg"), n, "jpeg")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(data: ImageDataset, backbone: Backbone, args: argparse.Namespace,
                device: torch.device) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Decode every batch into memory; the loader's first-batch latency and images/s."""
    batches = []
    start = time.perf_counter()
    first = 0.0
    files = ImageFiles(data, np.arange(len(data)), backbone.preprocess)
    for _, images, errors in image_batches(files, args.batch_size, args.workers, device):
        if any(errors):
            raise SystemExit(f"unreadable images: {[e for e in errors if e][:3]}")
        first = first or time.perf_counter() - start
        batches.append(images)
    seconds = time.perf_counter() - start
    return batches, {"loader_first_batch_s": round(first, 3), "loader_images_per_s": round(len(data) / seconds, 1)}


def forward_step(batches: list[torch.Tensor], backbone: Backbone, device: torch.device,
                 grid: bool) -> Callable[[], None]:
    """A pass of ``DeviceBackbone`` alone over ``batches``, outputs copied to the CPU; warmed up."""
    run = DeviceBackbone(backbone, device)

    def step(images: torch.Tensor) -> None:
        pooled, spatial, _ = run(images)
        pooled.cpu()
        if grid:
            spatial.cpu()

    def all_batches() -> None:
        for images in batches:
            step(images)

    step(batches[0])
    _sync(device)
    return all_batches


def timed(fn: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Wall-clock and CPU seconds of ``fn()``, with queued device work finished."""
    with CpuTime() as cpu:
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu": cpu.result}


def _best(runs: list[dict[str, Any]], prefix: str, n: int) -> dict[str, Any]:
    """The fastest of ``runs`` (from :func:`timed`), plus every run's images/s."""
    best = min(runs, key=lambda r: r["seconds"])
    return {f"{prefix}_images_per_s": round(n / best["seconds"], 1), f"{prefix}_s": round(best["seconds"], 3),
            f"{prefix}_cpu_s": best["cpu"], f"{prefix}_runs_images_per_s": [round(n / r["seconds"], 1) for r in runs]}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0", help=BACKBONE_NAMES)
    p.add_argument("--pretrained", default=None, help="default: imagenet for efficientnet_lite0, else none")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--grid", action="store_true", help="also extract and store spatial features")
    p.add_argument("--source", default="synthetic",
                   help="synthetic: the built-in 64 px PNGs; jpeg: %dx%d JPEGs made from them; folder:PATH: real "
                        "photos in PATH/<class>/ (e.g. CUB_200_2011/images)" % JPEG_SIZE)
    p.add_argument("--out-dir", type=Path, default=None, help="data and feature files (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each phase; the fastest is reported")
    args = p.parse_args(argv)
    if args.source not in ("synthetic", "jpeg") and not (args.source.startswith("folder:")
                                                         and Path(args.source[7:]).is_dir()):
        p.error(f"--source {args.source!r}: use synthetic, jpeg or folder:PATH with an existing folder")
    if not is_backbone(args.backbone):
        p.error(f"--backbone {args.backbone!r}: use one of {BACKBONE_NAMES}")
    if min(args.images, args.batch_size, args.repeats) < 1 or args.workers < 0:
        p.error("--images, --batch-size and --repeats must be positive, --workers not negative")
    if args.pretrained is None:
        args.pretrained = "imagenet" if args.backbone == "efficientnet_lite0" else "none"
    return args


def benchmark(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = make_dataset(args.source, args.images, out_dir)
    backbone = load_backbone(args.backbone, args.pretrained, args.image_size)
    report: dict[str, Any] = {
        "backbone": args.backbone, "model": backbone.provenance["model"], "pretrained": args.pretrained,
        "image_size": backbone.preprocess.image_size, "grid": args.grid, "source": args.source,
        "images": len(data), "batch_size": args.batch_size, "workers": args.workers, "device": str(device),
        "device_name": device_name(device), "cpu_count": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    options: dict[str, Any] = {"grid": args.grid, "batch_size": args.batch_size, "workers": args.workers,
                               "device": str(device), "overwrite": True}
    output = out_dir / "features.h5"

    def full() -> None:
        result = extract(data, backbone, output, **options)
        if result.written != len(data):
            raise SystemExit(f"extract wrote {result.written} of {len(data)} images: {result.summary()}")

    log.info("full extraction: warm-up, then timed run 1 (peak memory)")
    extract(_subset(data, min(args.batch_size, len(data)), data.name), backbone, out_dir / "warmup.h5", **options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakMemory(children=True) as memory:
        full_runs = [timed(full, device)]
    memory_report = {
        "peak_rss_main_mib": round(memory.main / MIB, 1),
        "peak_uss_workers_mib": round(memory.workers / MIB, 1),
        "peak_total_mib": round(memory.total / MIB, 1),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated(device) / MIB, 1) if device.type == "cuda" else None,
        "output_mib": round(output.stat().st_size / MIB, 1),
    }
    log.info("decoding %d images into memory", len(data))
    batches, loader = time_loader(data, backbone, args, device)
    forward = forward_step(batches, backbone, device, args.grid)
    log.info("forward pass only: timed run 1")
    forward_runs = [timed(forward, device)]
    for r in range(2, args.repeats + 1):
        log.info("timed run %d: full extraction, forward pass only", r)
        output.unlink()
        full_runs.append(timed(full, device))
        forward_runs.append(timed(forward, device))
    ratio = min(r["seconds"] for r in forward_runs) / min(r["seconds"] for r in full_runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {**report, "repeats": args.repeats, **_best(full_runs, "full", len(data)),
            **_best(forward_runs, "forward", len(data)), "ratio": round(ratio, 3),
            "target_met": ratio >= 0.9, **loader, **memory_report, "peak_rss_process_mib": round(peak / MIB, 1)}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    if args.out_dir is not None:
        result = benchmark(args, args.out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
            result = benchmark(args, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
