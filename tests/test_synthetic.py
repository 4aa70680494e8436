"""The built-in synthetic dataset: determinism, class/split structure, the ZSL property, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.base import ImageDataset
from pipeline.datasets.synthetic import (
    FACTORS,
    META_NAME,
    N_UNSEEN,
    generate_synthetic,
    load_synthetic,
    synthetic_attributes,
)
from pipeline.errors import PipelineError


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default dataset (seed 0), generated once for this module."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _class_sets(root: Path) -> dict[str, set[str]]:
    meta = json.loads((root / META_NAME).read_text())
    return {key: set(meta[f"{key}_classes"]) for key in ("seen", "unseen", "train", "val")}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_synthetic(tmp_path / name, images_per_class=3, image_size=32, seed=seed)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    images = [path for path in a if path.endswith(".png")]
    assert len(images) == 3 * len(load_synthetic(tmp_path / "a").classes)
    assert all(a[path] != c[path] for path in images)
    a_attrs, _ = synthetic_attributes(tmp_path / "a")
    c_attrs, _ = synthetic_attributes(tmp_path / "c")
    np.testing.assert_array_equal(a_attrs, c_attrs)  # classes are fixed; only which are unseen varies
    assert _class_sets(tmp_path / "a")["unseen"] != _class_sets(tmp_path / "c")["unseen"]


def test_classes_and_attributes_are_one_hot_factor_combinations(default_root: Path) -> None:
    ds = load_synthetic(default_root)
    attrs, names = synthetic_attributes(default_root)
    n_classes = int(np.prod([len(values) for values in FACTORS.values()]))
    assert isinstance(ds, ImageDataset) and len(ds.classes) == n_classes == len(set(ds.classes))
    assert attrs.dtype == np.float32 and attrs.shape == (n_classes, len(names))
    assert names == [f"{factor}:{value}" for factor, values in FACTORS.items() for value in values]
    for name, row in zip(ds.classes, attrs):
        assert {names[a] for a in np.flatnonzero(row)} == {f"{f}:{v}" for f, v in zip(FACTORS, name.split())}
    assert len(np.unique(attrs, axis=0)) == n_classes


def test_every_attribute_value_is_seen_and_in_train(default_root: Path) -> None:
    ds = load_synthetic(default_root)
    attrs, names = synthetic_attributes(default_root)
    sets = _class_sets(default_root)
    assert len(sets["unseen"]) == N_UNSEEN and not sets["unseen"] & sets["seen"]
    assert sets["seen"] | sets["unseen"] == set(ds.classes)
    assert sets["train"] | sets["val"] == sets["seen"] and not sets["train"] & sets["val"]
    for key in ("seen", "train", "unseen"):
        rows = [ds.classes.index(name) for name in sets[key]]
        assert attrs[rows].max(axis=0).min() == 1, f"an attribute value is absent from {key} classes"


def test_splits_are_disjoint_covering_and_label_consistent(default_root: Path) -> None:
    ds = load_synthetic(default_root)
    sets = _class_sets(default_root)
    splits = ds.splits
    assert set(splits) == {"trainval", "train", "val", "test_seen", "test_unseen"}
    for idx in splits.values():
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    everything = np.concatenate([splits["trainval"], splits["test_seen"], splits["test_unseen"]])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(ds)))
    np.testing.assert_array_equal(np.union1d(splits["train"], splits["val"]), splits["trainval"])
    assert not np.intersect1d(splits["train"], splits["val"]).size

    def classes_of(split: str) -> set[str]:
        return {ds.classes[label] for label in ds.labels[splits[split]]}

    assert classes_of("test_unseen") == sets["unseen"]
    assert classes_of("trainval") == classes_of("test_seen") == sets["seen"]
    assert classes_of("train") == sets["train"] and classes_of("val") == sets["val"]
    seen_counts = np.bincount(ds.labels[splits["trainval"]], minlength=len(ds.classes))
    assert set(seen_counts[[ds.classes.index(c) for c in sets["seen"]]]) == {19}  # 24 images: 19 + 5
    for i in (0, len(ds) // 2, len(ds) - 1):
        assert ds.image_ids[i].split("/")[1] == ds.classes[ds.labels[i]].replace(" ", "_")
        with Image.open(ds.path(i)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))


def _features(ds: ImageDataset) -> np.ndarray:
    """Downsampled 16x16 pixels plus 16-bin per-channel histograms, one row per image."""
    rows = []
    for i in range(len(ds)):
        with Image.open(ds.path(i)) as image:
            pixels = np.asarray(image, dtype=np.float32) / 255
            small = np.asarray(image.resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
        hists = [np.histogram(pixels[..., ch], bins=16, range=(0, 1))[0] / pixels[..., ch].size for ch in range(3)]
        rows.append(np.concatenate([small.ravel(), *hists]))
    return np.stack(rows)


def test_attribute_model_recognises_unseen_classes_well_above_chance(default_root: Path) -> None:
    ds = load_synthetic(default_root)
    attrs, _ = synthetic_attributes(default_root)
    x = _features(ds)
    trainval, test = ds.splits["trainval"], ds.splits["test_unseen"]
    x = (x - x[trainval].mean(0)) / (x[trainval].std(0) + 1e-6)
    # Ridge regression from features to +-1 attributes, fitted on seen-class images only.
    w = np.linalg.solve(x[trainval].T @ x[trainval] + 1000 * np.eye(x.shape[1]),
                        x[trainval].T @ (2 * attrs[ds.labels[trainval]] - 1))
    unseen = np.unique(ds.labels[test])
    predicted, prototypes = x[test] @ w, 2 * attrs[unseen] - 1
    cosine = (predicted / np.linalg.norm(predicted, axis=1, keepdims=True)) @ (
        prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)).T
    guess, truth = unseen[cosine.argmax(1)], ds.labels[test]
    accuracy = np.mean([np.mean(guess[truth == c] == c) for c in unseen])
    chance = 1 / len(unseen)
    assert accuracy >= 3 * chance, f"unseen per-class accuracy {accuracy:.3f} vs chance {chance:.3f}"


def test_regeneration_is_a_no_op_or_a_clean_rebuild(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, images_per_class=3, image_size=32)
    meta, image = tmp_path / META_NAME, tmp_path / load_synthetic(tmp_path).image_ids[0]
    stamps = (meta.stat().st_mtime_ns, image.stat().st_mtime_ns)
    generate_synthetic(tmp_path, images_per_class=3, image_size=32)
    assert (meta.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps
    generate_synthetic(tmp_path, images_per_class=2, image_size=32)
    ds = load_synthetic(tmp_path)
    assert len(ds) == 2 * len(ds.classes) == len(list((tmp_path / "images").rglob("*.png")))
    assert json.loads(meta.read_text())["params"]["images_per_class"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", META_NAME]


def test_missing_or_incomplete_dataset_raises_with_path_and_fix(tmp_path: Path) -> None:
    meta = tmp_path / META_NAME
    with pytest.raises(PipelineError, match="synthesize") as missing:
        load_synthetic(tmp_path)
    assert str(meta) in str(missing.value)
    generate_synthetic(tmp_path, images_per_class=2, image_size=16)
    complete = meta.read_text()
    meta.write_text(complete[: len(complete) // 2])  # truncated metadata
    for reader in (load_synthetic, synthetic_attributes):
        with pytest.raises(PipelineError, match="synthesize") as broken:
            reader(tmp_path)
        assert str(meta) in str(broken.value) and "\n" not in str(broken.value)
    meta.write_text(complete)
    (tmp_path / load_synthetic(tmp_path).image_ids[-1]).unlink()
    with pytest.raises(PipelineError, match="1 of .* images missing"):
        load_synthetic(tmp_path)
    generate_synthetic(tmp_path, images_per_class=2, image_size=16)  # repairs an incomplete root
    assert len(load_synthetic(tmp_path)) == 2 * len(load_synthetic(tmp_path).classes)


@pytest.mark.parametrize("kwargs", [{"images_per_class": 1}, {"image_size": 8}, {"seed": -1}])
def test_invalid_parameters_are_rejected(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(PipelineError):
        generate_synthetic(tmp_path, **kwargs)
