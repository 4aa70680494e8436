"""Dataset adapters; :data:`LOADERS` maps each name to its loader (the names the command line offers,
:data:`pipeline.choices.DATASETS`, in the same order), ``load_dataset`` picks one by name."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.choices import DATASETS
from pipeline.datasets.base import ImageDataset
from pipeline.datasets.coco import load_coco
from pipeline.datasets.folder import load_folder
from pipeline.datasets.gbu import load_gbu
from pipeline.datasets.imagenet import load_imagenet
from pipeline.datasets.nus_wide import load_nus_wide
from pipeline.datasets.synthetic import load_synthetic
from pipeline.datasets.tag_table import load_tag_table
from pipeline.datasets.webdataset import load_webdataset
from pipeline.errors import PipelineError

Loader = Callable[[str, Path, Path | None], ImageDataset]  # (name, root, splits file) -> dataset


def _own_splits(load: Callable[[Path], ImageDataset]) -> Loader:
    """A dataset that brings its own splits: a splits file would be ignored, so it is an error."""

    def loader(name: str, root: Path, splits: Path | None) -> ImageDataset:
        if splits is not None:
            raise PipelineError(f"{name}: --splits {splits} would be ignored ({name} brings its own splits); "
                                "drop it (data.splits: null)")
        return load(root)

    return loader


def _needs_splits(load: Callable[[Path, Path], ImageDataset], wanted: str) -> Loader:
    """A dataset whose zero-shot split comes from a file (``wanted``: which, for the error without one)."""

    def loader(name: str, root: Path, splits: Path | None) -> ImageDataset:
        if splits is None:
            raise PipelineError(f"{name}: pass --splits {wanted}")
        return load(root, splits)

    return loader


def _optional_splits(load: Callable[..., ImageDataset]) -> Loader:
    """A labelled tree with an optional list of unseen classes (a zero-shot split)."""
    return lambda name, root, splits: load(root, unseen=splits)


def _tag_table(root: Path, splits: Path) -> ImageDataset:
    table = Path(root)
    return load_tag_table(table / "tags.csv" if table.is_dir() else table, splits)


LOADERS: dict[str, Loader] = {
    "synthetic": _own_splits(load_synthetic),
    "folder": _optional_splits(load_folder),
    "webdataset": _optional_splits(load_webdataset),
    "imagenet": _needs_splits(load_imagenet, "/path/to/imagenet-split.json (1K train / 21K test wnids)"),
    **{gbu: _needs_splits(partial(load_gbu, gbu), f"/path/to/xlsa17/data/{gbu.upper()}/att_splits.mat")
       for gbu in ("cub", "awa2", "sun")},
    "nus_wide": _own_splits(load_nus_wide),
    "coco": _needs_splits(load_coco, "/path/to/cls_ids.pickle (the 48 seen / 17 unseen class split)"),
    "tags": _needs_splits(_tag_table, "unseen.txt (the unseen tags of the table, one per line)"),
}


def load_dataset(name: str, root: Path, splits_file: Path | None = None) -> ImageDataset:
    """The dataset ``name`` rooted at ``root``.

    ``splits_file``: ImageNet needs ``imagenet-split.json`` (1K train / 21K test wnids),
    CUB/AWA2/SUN the xlsa17 ``att_splits.mat``, COCO the 48/17
    ``cls_ids.pickle``, ``tags`` the unseen-tag list (``root`` is then the CSV/TSV table, or a
    folder holding ``tags.csv``), ``folder`` and ``webdataset`` (a folder of ``.tar`` shards)
    optionally the unseen-class list (a zero-shot split); synthetic and NUS-WIDE need none.
    """
    key = name.lower()
    if key not in LOADERS:
        raise PipelineError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return LOADERS[key](name, root, splits_file)
