"""WebDataset tar shards: ``root/*.tar`` (``000000.tar`` ... ``001023.tar``, as LAION, DataComp and
ImageNet-21K copies ship them), each holding samples ``<key>.jpg`` (or ``.jpeg .png .webp .bmp``) +
``<key>.cls`` (the class index as text) or ``<key>.json`` (an object whose ``"label"`` or ``"cls"`` is the
class index, as ImageNet copies such as timm's ``imagenet-1k-wds`` write it), with the class names in
``root/classes.txt`` (line i names class i); optionally a zero-shot split from a list of unseen class
names, as for a folder tree.

Rows are the shards in name order, then the samples in the order of their members in the tar (a
sample's key is its member path up to the first dot of the file name, the WebDataset convention).
A shard is listed from its tar headers alone (the standard library's ``tarfile``): each image's byte
offset and size are recorded (:attr:`ImageDataset.members`), so extraction reads an image by offset
without unpacking anything, in any order (threaded decoding, resume after a kill). Under torchrun each
rank lists only its own shards (``part``: consecutive shards, :func:`shard_part`), so no process lists
the whole collection; rank 0 then assembles the joined store's row list from the shard stores
(:func:`webdataset_from_rows`). :func:`write_webdataset` copies any dataset into this layout.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets.base import ImageDataset
from pipeline.datasets.folder import IMAGE_EXTENSIONS, read_unseen, zero_shot_splits
from pipeline.errors import PipelineError
from pipeline.text_files import read_utf8


def tar_shards(root: Path) -> list[Path]:
    """The ``*.tar`` files directly in ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root}: WebDataset folder not found; pass the directory holding the .tar shards")
    shards = sorted(p for p in root.glob("*.tar") if p.is_file())
    if not shards:
        raise PipelineError(f"{root}: no .tar shards; expected root/000000.tar ... with <key>.jpg + <key>.cls samples")
    return shards


def shard_part(n_shards: int, rank: int, world: int) -> range:
    """The shards (indices into :func:`tar_shards`) of ``rank`` of ``world``: consecutive blocks of
    ``ceil(n_shards / world)`` (the last ranks may get fewer or none)."""
    block = -(-n_shards // world)
    return range(min(rank * block, n_shards), min((rank + 1) * block, n_shards))


def read_classes(root: Path) -> list[str]:
    """The class names of ``root/classes.txt``, one per line (line i names class i)."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise PipelineError(f"{path}: class names not found; write one class name per line (line i names the "
                            "class whose .cls files hold i)")
    classes = [line.strip() for line in read_utf8(path, "class list").splitlines()]
    if not classes or any(not c for c in classes) or len(set(classes)) != len(classes):
        raise PipelineError(f"{path}: needs one distinct, non-empty class name per line")
    return classes


def list_shard(shard: Path, n_classes: int) -> tuple[list[str], list[int], list[tuple[int, int]]]:
    """Image ids (``<shard name>/<member>``), class indices and (offset, size) of the images of ``shard``,
    in member order, from its tar headers and ``.cls`` (else ``.json``) members."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:  # uncompressed: members are then readable by offset
            for info in tar:
                if not info.isfile():
                    continue
                folder, _, name = info.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if dot:
                    samples.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext.lower()] = info
            labels = {key: _label(tar, parts.get("cls") or parts["json"], shard, n_classes)
                      for key, parts in samples.items() if "cls" in parts or "json" in parts}
    except (tarfile.TarError, OSError) as e:
        raise PipelineError(f"{shard}: not a readable uncompressed tar ({e}); re-download or re-create "
                            "the shard") from None
    ids, classes, members = [], [], []
    for key, parts in samples.items():
        images = [ext for ext in parts if f".{ext}" in IMAGE_EXTENSIONS]
        if not images or key not in labels:
            raise PipelineError(f"{shard}: sample {key!r} has {'no image' if not images else 'no .cls or .json'} "
                                f"member; every sample needs <key>.jpg (or {', '.join(sorted(IMAGE_EXTENSIONS))}) "
                                "and <key>.cls (or <key>.json with a \"label\")")
        image = parts[images[0]]
        ids.append(f"{shard.name}/{image.name}")
        classes.append(labels[key])
        members.append((image.offset_data, image.size))
    return ids, classes, members


def _label(tar: tarfile.TarFile, info: tarfile.TarInfo, shard: Path, n_classes: int) -> int:
    """The class index a ``.cls`` member holds as text, or a ``.json`` member under ``"label"`` / ``"cls"``."""
    text = tar.extractfile(info).read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
    is_json = info.name.lower().endswith(".json")
    if is_json:
        text = str(_json_label(text))
    if not text.lstrip("-").isdigit() or not 0 <= int(text) < n_classes:
        wanted = 'an integer "label"' if is_json else "a class index"
        raise PipelineError(f"{shard}: {info.name} holds {text[:40]!r}, not {wanted} in 0..{n_classes - 1} "
                            "(the lines of classes.txt)")
    return int(text)


def _json_label(text: str) -> object:
    """The ``"label"`` (else ``"cls"``) of a JSON object, or ``text`` itself when it holds none."""
    try:
        record = json.loads(text)
    except ValueError:
        return text
    value = record.get("label", record.get("cls")) if isinstance(record, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else text


def load_webdataset(root: Path, unseen: Path | None = None, part: tuple[int, int] | None = None) -> ImageDataset:
    """The samples of the tar shards of ``root`` (all, or ``part`` = (rank, world): that rank's shards,
    :func:`shard_part`, without splits), with a zero-shot split when ``unseen`` lists unseen classes."""
    root = Path(root)
    shards = tar_shards(root)
    classes = read_classes(root)
    if part is not None:
        shards = [shards[i] for i in shard_part(len(shards), *part)]
    ids: list[str] = []
    labels: list[int] = []
    members: list[tuple[int, int]] = []
    for shard in tqdm(shards, desc=f"listing {root.name}", unit="shard", disable=len(shards) < 8):
        shard_ids, shard_labels, shard_members = list_shard(shard, len(classes))
        ids += shard_ids
        labels += shard_labels
        members += shard_members
    if not ids and part is None:
        raise PipelineError(f"{root}: the .tar shards hold no samples")
    dataset = webdataset_from_rows(root, ids, np.array(labels, dtype=np.int64), None if part else unseen, classes)
    return replace(dataset, members=np.array(members, dtype=np.int64).reshape(-1, 2))


def webdataset_from_rows(root: Path, image_ids: list[str], labels: np.ndarray, unseen: Path | None,
                         classes: list[str] | None = None) -> ImageDataset:
    """The dataset of ``root`` with the given rows (image ids and labels, e.g. read back from the shard
    stores of a torchrun extraction) and its zero-shot split, without member offsets (its images are
    not read again)."""
    root = Path(root)
    classes = read_classes(root) if classes is None else classes
    splits = zero_shot_splits(image_ids, labels, classes, read_unseen(unseen, classes)) if unseen else {}
    return ImageDataset(root.resolve().name, root, image_ids, labels, classes, splits)


def write_webdataset(source: ImageDataset, root: Path, per_shard: int) -> list[Path]:
    """Copy ``source`` (labelled rows, in order) into WebDataset shards of ``per_shard`` samples
    (``root/000000.tar``, ...: ``<row>.<image extension>`` + ``<row>.cls``) and ``root/classes.txt``;
    returns the shards. The copy lists as ``source`` does, in the same row order."""
    if (source.labels < 0).any():
        raise PipelineError(f"{source.name}: WebDataset samples need a class; some rows have none (label -1)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in source.classes))
    shards = []
    for k, start in enumerate(range(0, len(source), per_shard)):
        shards.append(root / f"{k:06d}.tar")
        with tarfile.open(shards[-1], "w") as tar:
            for i in range(start, min(start + per_shard, len(source))):
                with source.open(i) as image:
                    _add(tar, f"{i:09d}{Path(source.image_ids[i]).suffix.lower()}", image.read())
                _add(tar, f"{i:09d}.cls", str(int(source.labels[i])).encode())
    return shards


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
