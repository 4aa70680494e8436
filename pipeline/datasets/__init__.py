"""Dataset adapters; ``load_dataset`` picks one by name."""
from __future__ import annotations

from pathlib import Path

from pipeline.choices import DATASETS
from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError


def load_dataset(name: str, root: Path, splits_file: Path | None = None) -> ImageDataset:
    """The dataset ``name`` rooted at ``root``.

    ``splits_file``: ImageNet needs ``imagenet-split.json`` (1K train / 21K test wnids),
    CUB/AWA2/SUN the xlsa17 ``att_splits.mat``, COCO the 48/17
    ``cls_ids.pickle``, ``tags`` the unseen-tag list (``root`` is then the CSV/TSV table, or a
    folder holding ``tags.csv``), ``folder`` and ``webdataset`` (a folder of ``.tar`` shards)
    optionally the unseen-class list (a zero-shot split); synthetic and NUS-WIDE need none.
    """
    from pipeline.datasets.coco import load_coco
    from pipeline.datasets.folder import load_folder
    from pipeline.datasets.gbu import load_gbu
    from pipeline.datasets.imagenet import load_imagenet
    from pipeline.datasets.nus_wide import load_nus_wide
    from pipeline.datasets.synthetic import load_synthetic
    from pipeline.datasets.tag_table import load_tag_table
    from pipeline.datasets.webdataset import load_webdataset

    key = name.lower()
    if key in ("synthetic", "nus_wide") and splits_file is not None:
        raise PipelineError(f"{name}: --splits {splits_file} would be ignored ({name} brings its own splits); "
                            "drop it (data.splits: null)")
    if key == "synthetic":
        return load_synthetic(root)
    if key == "folder":
        return load_folder(root, unseen=splits_file)
    if key == "webdataset":
        return load_webdataset(root, unseen=splits_file)
    if key == "imagenet":
        if splits_file is None:
            raise PipelineError("imagenet: pass --splits /path/to/imagenet-split.json (1K train / 21K test wnids)")
        return load_imagenet(root, splits_file)
    if key in ("cub", "awa2", "sun"):
        if splits_file is None:
            raise PipelineError(f"{name}: pass --splits /path/to/xlsa17/data/{name.upper()}/att_splits.mat")
        return load_gbu(key, root, splits_file)
    if key == "nus_wide":
        return load_nus_wide(root)
    if key == "coco":
        if splits_file is None:
            raise PipelineError("coco: pass --splits /path/to/cls_ids.pickle (the 48 seen / 17 unseen class split)")
        return load_coco(root, splits_file)
    if key == "tags":
        if splits_file is None:
            raise PipelineError(f"tags: pass --splits unseen.txt (the unseen tags of {root}, one per line)")
        table = Path(root)
        return load_tag_table(table / "tags.csv" if table.is_dir() else table, splits_file)
    raise PipelineError(f"unknown dataset {name!r}; choose one of {DATASETS}")
