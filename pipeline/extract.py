"""Run a frozen backbone over a dataset once and fill a feature store, resumably.

The store is written to ``<output>.partial`` and renamed to ``<output>`` when every row is
done, so ``<output>`` only ever names a finished file. Rerunning the same command after an
interruption (Ctrl-C, kill -9) continues with the rows not yet marked ``ok``; a finished
output with the same settings is left as it is.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import pipeline
from pipeline.backbones import Backbone, Preprocess
from pipeline.datasets.base import ImageDataset
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.hdf5 import not_hdf5
from pipeline.outputs import check_replaceable
from pipeline.store import SCHEMA_VERSION, FeatureStore, FeatureWriter, create_store

log = logging.getLogger(__name__)

# Settings that must match for a partial file to be resumed or a finished one reused.
_IDENTITY = ("dataset", "image_list_sha1", "backbone", "model", "pretrained", "image_size", "resize_size",
             "interpolation", "mean", "std", "dtype", "grid_shape", "mid_grid_shape")


@dataclass
class ExtractResult:
    """What a run did: rows written now, rows already done before, unreadable images."""

    path: Path
    written: int = 0
    reused: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the end of a run; names the first few unreadable images."""
        line = f"{self.path}: {self.written} images extracted, {self.reused} already done, {len(self.failures)} failed"
        if self.failures:
            with FeatureStore(self.path) as store:
                ids = store.image_ids
            shown = "; ".join(f"{ids[i]} ({e})" for i, e in list(self.failures.items())[:3])
            line += f": {shown}{' ...' if len(self.failures) > 3 else ''} (all listed by: python cli.py info {self.path})"
        return line


def rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. Integer greyscale of more than 8 bits (PNG ``I;16``, ``I``) is scaled from
    0..65535 to 0..255 and float greyscale (``F``) clipped to 0..255, where ``convert("RGB")`` would
    saturate them to white; every other mode goes through ``convert("RGB")``."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            values = values / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


MAX_ASPECT = 100  # longest side / shortest side of an image extract reads (a panorama is ~10)


class ImageFiles(Dataset):
    """Decoded, resized, centre-cropped uint8 images [3, S, S] of ``dataset`` rows ``indices``.

    An image that cannot be read yields a zero tensor and the error text instead of raising,
    so one bad file never stops a run. Normalisation happens on the device, in the main process.
    """

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, preprocess: Preprocess):
        import torchvision.transforms as T

        self.dataset = dataset
        self.indices = indices
        self.size = preprocess.image_size
        self.resize_size = preprocess.resize_size
        mode = T.InterpolationMode(preprocess.interpolation)
        self.transform = T.Compose([T.Resize(preprocess.resize_size, mode), T.CenterCrop(preprocess.image_size),
                                    T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, str]:
        i = int(self.indices[k])
        try:
            with self.dataset.open(i) as file, Image.open(file) as img:
                if max(img.size) > MAX_ASPECT * min(img.size):  # resizing its short side would take gigabytes
                    raise ValueError(f"{img.size[0]}x{img.size[1]} px: an aspect ratio beyond {MAX_ASPECT}:1")
                img.draft("RGB", (self.resize_size, self.resize_size))  # JPEG: decode at reduced scale
                x = self.transform(rgb(img))
            return i, x, ""
        except (OSError, ValueError, SyntaxError, MemoryError, Image.DecompressionBombError) as e:
            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), f"{type(e).__name__}: {e}"


Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


def image_batches(files: ImageFiles, batch_size: int, workers: int, device: torch.device) -> Iterator[Batch]:
    """(row indices, uint8 images [B, 3, S, S], error texts) of ``files`` in order, decoded ahead.

    CUDA: a DataLoader with ``workers`` processes and pinned memory. CPU: ``workers`` decoding
    threads (PIL releases the GIL while it decodes and resizes), which share the cores with the
    forward pass more cheaply than worker processes. ``workers=0`` decodes in the caller.
    Close the generator to stop early; queued decoding is then cancelled.
    """
    if device.type == "cuda":
        yield from DataLoader(files, batch_size=batch_size, num_workers=workers, pin_memory=True,
                              prefetch_factor=4 if workers else None)
        return
    starts = range(0, len(files), batch_size)
    if workers == 0:
        for start in starts:
            yield _decode_batch(files, start, batch_size)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        ahead: deque[Future[Batch]] = deque()
        try:
            for start in starts:
                ahead.append(pool.submit(_decode_batch, files, start, batch_size))
                if len(ahead) > 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for job in ahead:
                job.cancel()


def _decode_batch(files: ImageFiles, start: int, batch_size: int) -> Batch:
    rows, images, errors = zip(*(files[k] for k in range(start, min(start + batch_size, len(files)))))
    return torch.tensor(rows), torch.stack(images), list(errors)


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of returning it to the OS at once.

    A CPU forward pass frees and reallocates the same large activation buffers every batch;
    by default each is a fresh ``mmap`` whose pages fault in again (EfficientNet-Lite0 on 2
    cores ran 2.3x slower so). Process-wide; the process keeps its peak heap. No-op without glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 1 << 30)


@contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C sets the returned event (the loop finishes its batch and stops); a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.default_int_handler(signum, frame)
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class DeviceBackbone:
    """A backbone on a device: normalises uint8 batches there; CUDA: fp16 autocast, channels_last."""

    def __init__(self, backbone: Backbone, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.model = backbone.to(device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        pre = backbone.preprocess
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled, grid, mid grid) of a uint8 batch, float32 on the device."""
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.cuda else nullcontext()
        with amp:
            pooled, grid, mid = self.model(x)
        return pooled.float(), grid.float(), mid.float()


def _versions() -> dict[str, str]:
    out = {"pipeline": pipeline.__version__}
    for pkg in ("torch", "torchvision", "open_clip_torch", "timm", "h5py"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def store_provenance(dataset: ImageDataset, backbone: Backbone, dtype: str, grid: bool, mid_grid: bool) -> dict[str, Any]:
    """The attributes a store of ``dataset``'s features records (and two runs compare, :data:`_IDENTITY`)."""
    ids = hashlib.sha1("\n".join(dataset.image_ids).encode()).hexdigest()
    return {**backbone.provenance, "dataset": dataset.name, "image_list_sha1": ids, "dtype": dtype,
            "grid_shape": list(backbone.grid_shape) if grid else [],
            "mid_grid_shape": list(backbone.mid_grid_shape) if mid_grid else [], "versions": _versions()}


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for a whole run (``flock`` on ``OUTPUT.lock``, which keeps
    the holder's pid), independent of HDF5's own file locking (often off on NFS/Lustre): a second
    run on the same output is refused with one line naming the first. The OS drops the lock when
    the holder exits, even after kill -9; the lock file itself stays (it holds no data)."""
    path = output.with_name(output.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PipelineError(f"{output}: cannot write in {path.parent} ({e.strerror or e}); choose a writable "
                            "output folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise PipelineError(f"{output}: another extraction (pid {holder}) is writing it; let it finish "
                                "(or stop it), then rerun this command to resume") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:
            raise PipelineError(f"{output}: cannot write in {path.parent} ({e.strerror or e}); make room there "
                                "and rerun") from None
        yield
    finally:
        os.close(fd)


def _schema(path: Path) -> Any:
    with FeatureStore(path) as store:
        return store.provenance.get("schema_version")


def _same_settings(path: Path, wanted: dict[str, Any]) -> tuple[bool, bool]:
    """(settings match, file complete) for an existing store at ``path``."""
    with FeatureStore(path) as store:
        have, complete = store.provenance, store.complete
    mismatched = [k for k in _IDENTITY if normal_setting(have.get(k)) != normal_setting(wanted.get(k))]
    if mismatched:
        log.info("%s differs in %s", path, mismatched)
    return not mismatched, complete


def finished(output: Path, wanted: dict[str, Any], overwrite: bool) -> ExtractResult | None:
    """The result of reusing ``output`` when it is a finished store with the ``wanted`` settings; None
    when there is none (or ``overwrite``); raises when it exists with other settings."""
    if not output.exists() or overwrite:
        return None
    foreign = not_hdf5(output)
    if foreign:
        raise PipelineError(f"{output} exists and is {foreign}; choose another --output, or pass --overwrite to "
                            "replace it")
    same, complete = _same_settings(output, wanted)
    if same and complete:
        with FeatureStore(output) as store:
            return ExtractResult(output, reused=int(store.ok.sum()), failures=store.failures)
    raise PipelineError(f"{output} exists with other settings; delete it or pass --overwrite to replace it")


def normal_setting(value: Any) -> Any:
    """A provenance value in the form two runs compare (lists and tuples alike, floats to 6 places)."""
    return [round(v, 6) for v in value] if isinstance(value, (list, tuple)) else value


def extract(
    dataset: ImageDataset,
    backbone: Backbone,
    output: Path,
    *,
    dtype: str = "float16",
    grid: bool = False,
    mid_grid: bool = False,
    batch_size: int | None = None,
    workers: int = 2,
    device: str = "auto",
    overwrite: bool = False,
    max_failures: float = 0.01,
) -> ExtractResult:
    """Extract pooled features of every image of ``dataset``; with ``grid`` also the last stage's
    spatial features, with ``mid_grid`` also an earlier stage's (``grid_mid``, for multi-level fusion).

    Unreadable images are recorded as failures and the store is finished without them, up to
    ``max_failures`` (a fraction of the images when below 1, else a count); beyond that the run stops
    before finishing, its rows kept for a rerun."""
    if mid_grid and not grid:
        raise PipelineError("mid_grid adds an earlier stage to the grid features: pass --grid as well")
    if (batch_size is not None and batch_size < 1) or workers < 0:
        raise PipelineError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    limit = failure_limit(max_failures, len(dataset))
    check_replaceable(output, "feature store")
    with output_lock(output):
        return _extract_locked(dataset, backbone, output, dtype=dtype, grid=grid, mid_grid=mid_grid,
                               batch_size=batch_size, workers=workers, device=device, overwrite=overwrite,
                               limit=limit)


def batch_size_for(batch_size: int | None, device: torch.device, image_size: int) -> int:
    """``batch_size``, or when None the default for ``device``: on a GPU 64 images; on the CPU as many as
    hold the pixels of 32 images of 224 px (8 of 448 px). Smaller batches stay in the CPU's caches: on 2
    cores EfficientNet-Lite0 extracted the 1,000 IN200 photos at 224 px in 16.4 s with 32 (20.3 s with 64,
    peak 1.4 against 2.5 GB) and at 448 px in 55.7 s with 8 (87.3 s with 64, peak 1.6 against 6.9 GB)."""
    if batch_size is not None:
        return batch_size
    if device.type == "cuda":
        return 64
    return max(1, round(32 * 224 * 224 / image_size**2))


def failure_limit(max_failures: float, n: int) -> int:
    """How many of ``n`` images may fail: ``max_failures`` × n when it is below 1, else the count itself."""
    if not 0 <= max_failures < float("inf") or (max_failures >= 1 and max_failures != int(max_failures)):
        raise PipelineError(f"max_failures must be a fraction in [0, 1) or a whole count, got {max_failures}")
    return int(max_failures * n) if max_failures < 1 else int(max_failures)


def _extract_locked(dataset: ImageDataset, backbone: Backbone, output: Path, *, dtype: str, grid: bool,
                    mid_grid: bool, batch_size: int | None, workers: int, device: str, overwrite: bool,
                    limit: int) -> ExtractResult:
    """:func:`extract`, with the output's lock held."""
    wanted = store_provenance(dataset, backbone, dtype, grid, mid_grid)
    partial = output.with_name(output.name + ".partial")
    done = finished(output, wanted, overwrite)
    if done is not None:
        return done
    started_by = _schema(partial) if partial.exists() else SCHEMA_VERSION
    if started_by != SCHEMA_VERSION:
        log.warning("%s was started by an older version (store schema %s); starting over", partial, started_by)
        partial.unlink()
    if partial.exists() and not _same_settings(partial, wanted)[0]:  # the same settings resume, overwrite or not
        log.warning("%s was started with other settings; starting over", partial)
        partial.unlink()
    if not partial.exists():
        create_store(partial, dataset, backbone.feature_dim, dtype, backbone.grid_shape if grid else None, wanted,
                     mid_grid_shape=backbone.mid_grid_shape if mid_grid else None, head=backbone.head)

    dev = resolve_device(device)
    batch_size = batch_size_for(batch_size, dev, backbone.preprocess.image_size)
    run = DeviceBackbone(backbone, dev)
    result = ExtractResult(output)
    with FeatureWriter(partial) as writer:
        pending = writer.pending()
        result.reused = len(dataset) - len(pending)
        if not run.cuda:
            keep_freed_memory()
        batches = image_batches(ImageFiles(dataset, pending, backbone.preprocess), batch_size, workers, dev)
        bar = tqdm(total=len(pending), unit="img", desc=f"extract {backbone.provenance['model']}", smoothing=0.1)
        with bar, _stop_on_ctrl_c() as stop, closing(batches):  # the bar ends its line on errors too
            for idx, images, errors in batches:
                good = torch.tensor([e == "" for e in errors])
                result.failures.update({int(i): e for i, e in zip(idx.tolist(), errors) if e})
                if good.any():
                    pooled, spatial, mid = run(images[good])
                    rows = idx[good].numpy()
                    writer.write(rows, pooled.cpu().numpy().astype(dtype),
                                 spatial.cpu().numpy().astype(dtype) if grid else None,
                                 mid.cpu().numpy().astype(dtype) if mid_grid else None)
                    result.written += len(rows)
                bar.update(len(idx))
                if stop.is_set():
                    break
        done = result.reused + result.written
        if stop.is_set():
            raise PipelineError(f"interrupted: {done} of {len(dataset)} rows are saved in {partial}; "
                                "rerun the same command to resume")
        if len(result.failures) > limit:
            shown = "; ".join(f"{dataset.image_ids[i]} ({e})" for i, e in list(result.failures.items())[:3])
            raise PipelineError(f"{len(result.failures)} of {len(dataset)} images could not be read, more than "
                                f"max_failures allows ({limit}): {shown}; the {done} others are saved in {partial}: "
                                "fix or remove those images, or raise max_failures, and rerun")
        writer.finalize(result.failures)
    partial.replace(output)
    return result
