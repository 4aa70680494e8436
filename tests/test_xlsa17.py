"""Importing the benchmark's precomputed ``res101.mat`` into a feature store."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from pipeline.datasets.gbu import read_att_splits
from pipeline.xlsa17 import PRETRAINED, import_xlsa17, relative_image_id
from pipeline.errors import PipelineError
from pipeline.store import FeatureStore

# The authors' prefixes as found in the real res101.mat files, before the paths of gbu_images/<NAME>.pkl.
REAL_PREFIX = {
    "CUB": "/BS/Deep_Fragments/work/MSc/CUB_200_2011/",
    "AWA2": "/BS/xian/work/data/",
    "SUN": "/BS/Deep_Fragments/work/MSc/data/SUN/",
}
SPLITS = ("trainval", "test_seen", "test_unseen")


def _save_res101(path: Path, features: np.ndarray, labels: np.ndarray, files: list[str]) -> Path:
    """A MATLAB v5 ``res101.mat`` laid out like the real one (``image_files`` an N x 1 cell)."""
    cells = np.empty((len(files), 1), dtype=object)
    cells[:, 0] = [np.array([f]) for f in files]
    scipy.io.savemat(str(path), {"features": features, "labels": labels.reshape(-1, 1), "image_files": cells})
    return path


def _features(n: int, dim: int) -> np.ndarray:
    """dim x N random features whose first row is the column index, so row order can be checked."""
    features = np.random.default_rng(0).standard_normal((dim, n), dtype=np.float32)
    features[0] = np.arange(n)
    return features


# ---------------------------------------------------------------- real benchmark tables


@pytest.mark.parametrize("name,dim", [("CUB", 2048), ("AWA2", 16), ("SUN", 16)])
def test_import_real_tables(shared_data: Path, tmp_path: Path, name: str, dim: int) -> None:
    # Full 2048-d features for CUB; AWA2 and SUN check paths, labels and splits with narrow features.
    with open(shared_data / f"gbu_images/{name}.pkl", "rb") as f:
        table = pickle.load(f)
    labels = np.asarray(table["labels"])
    n = len(labels)
    features = _features(n, dim)
    res101 = _save_res101(tmp_path / "res101.mat", features, labels + 1,
                          [REAL_PREFIX[name] + f for f in table["image_files"]])
    att_splits = shared_data / f"gbu/{name}/att_splits.mat"
    out = tmp_path / "out" / f"{name}.h5"
    import_xlsa17(res101, att_splits, out)

    assert not out.with_name(out.name + ".partial").exists()
    meta = read_att_splits(att_splits)
    with FeatureStore(out) as store:
        assert store.complete and store.ok.all() and store.failures == {}
        assert len(store) == n
        np.testing.assert_array_equal(store.features(), features.T)
        np.testing.assert_array_equal(store.labels, labels)
        assert store.classes == meta["classes"]
        ids = store.image_ids
        assert ids == [f.replace("//", "/") for f in table["image_files"]]
        assert all(i.startswith({"CUB": "CUB_200_2011/images/", "AWA2": "Animals_with_Attributes2/JPEGImages/",
                                 "SUN": "images/"}[name]) for i in ids)
        splits = store.splits
        assert set(splits) == set(SPLITS)
        for split in SPLITS:
            np.testing.assert_array_equal(splits[split], meta["splits"][split])
            np.testing.assert_array_equal(splits[split], np.sort(table[f"{split}_loc"].astype(np.int64)))
            rows = store.features(splits[split])
            np.testing.assert_array_equal(rows[:, 0], splits[split])  # row i holds mat column i
        unseen = np.asarray(table["unseenclasses"])
        np.testing.assert_array_equal(np.unique(store.labels[splits["test_unseen"]]), np.sort(unseen))
        assert not np.isin(store.labels[splits["trainval"]], unseen).any()
        prov = store.provenance
        assert prov["dataset"] == name and prov["backbone"] == "resnet101" and prov["model"] == "resnet101"
        assert prov["pretrained"] == PRETRAINED and prov["image_size"] == 224
        assert prov["source"] == str(res101.resolve()) and prov["splits_file"] == str(att_splits.resolve())
        assert prov["feature_dim"] == dim and prov["dtype"] == "float32" and prov["grid_shape"] == []
        assert not store.has_grid


# ---------------------------------------------------------------- small synthetic files


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict]:
    """An att_splits.mat of 3 classes over 6 images, in a folder named TINY, and matching res101 contents."""
    folder = tmp_path / "TINY"
    folder.mkdir()
    names = np.empty((3, 1), dtype=object)
    names[:, 0] = [np.array([c]) for c in ("cat", "dog", "eel")]
    scipy.io.savemat(str(folder / "att_splits.mat"), {
        "allclasses_names": names, "att": np.eye(4, 3), "original_att": np.eye(4, 3),
        "trainval_loc": np.array([[4], [1], [2]]), "test_seen_loc": np.array([[3]]),
        "test_unseen_loc": np.array([[6], [5]]),
    })
    res = {
        "features": _features(6, 2048).astype(np.float64),
        "labels": np.array([1, 2, 1, 2, 3, 3], dtype=np.uint8),
        "files": [f"/x//images/{c}/{i}.jpg" for i, c in enumerate(["cat", "dog", "cat", "dog", "eel", "eel"])],
    }
    return folder / "att_splits.mat", res


def test_import_tiny_float16_and_replace(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    att_splits, res = tiny
    res101 = _save_res101(tmp_path / "res101.mat", res["features"], res["labels"], res["files"])
    out = tmp_path / "tiny.h5"
    out.write_text("an old file is replaced")
    import_xlsa17(res101, att_splits, out, dataset="Tiny", dtype="float16")
    with FeatureStore(out) as store:
        assert store.provenance["dataset"] == "Tiny" and store.provenance["dtype"] == "float16"
        assert store.dataset("features").dtype == np.float16
        np.testing.assert_allclose(store.features(), res["features"].T, rtol=1e-3, atol=1e-3)
        assert store.labels.tolist() == [0, 1, 0, 1, 2, 2]
        assert store.image_ids[0] == "images/cat/0.jpg"
        assert {k: v.tolist() for k, v in store.splits.items()} == {
            "trainval": [0, 1, 3], "test_seen": [2], "test_unseen": [4, 5]}
    import_xlsa17(res101, att_splits, out)
    with FeatureStore(out) as store:
        assert store.provenance["dataset"] == "TINY"


def _expect_error(tiny: tuple[Path, dict], tmp_path: Path, match: str, **changes: object) -> None:
    att_splits, res = tiny
    res = {**res, **changes}
    res101 = _save_res101(tmp_path / "res101.mat", res["features"], res["labels"], res["files"])
    out = tmp_path / "out.h5"
    with pytest.raises(PipelineError, match=match) as err:
        import_xlsa17(res101, att_splits, out)
    assert "\n" not in str(err.value)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_label_beyond_classes(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    _expect_error(tiny, tmp_path, r"res101\.mat: labels span 1\.\.4, but .*att_splits\.mat has 3 classes",
                  labels=np.array([1, 2, 1, 2, 3, 4]))


def test_zero_based_labels(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    _expect_error(tiny, tmp_path, r"labels span 0\.\.2", labels=np.array([0, 1, 0, 1, 2, 2]))


def test_count_mismatch(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    _expect_error(tiny, tmp_path, r"features has 6 columns, labels 5 and image_files 6",
                  labels=np.array([1, 2, 1, 2, 3]))
    _expect_error(tiny, tmp_path, r"features has 6 columns, labels 6 and image_files 7",
                  files=tiny[1]["files"] + ["/x/images/cat/extra.jpg"])


def test_split_beyond_images(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    _, res = tiny
    _expect_error(tiny, tmp_path, r"att_splits\.mat: split test_unseen indexes row 6 .* has 5 images",
                  features=res["features"][:, :5], labels=res["labels"][:5], files=res["files"][:5])


def test_nan_feature(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    features = tiny[1]["features"].copy()
    features[7, 4] = np.nan
    _expect_error(tiny, tmp_path, r"res101\.mat: non-finite features in 1 images \(first: column 5\)",
                  features=features)


def test_missing_key_and_bad_files(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    att_splits, res = tiny
    res101 = tmp_path / "res101.mat"
    scipy.io.savemat(str(res101), {"features": res["features"], "labels": res["labels"]})
    with pytest.raises(PipelineError, match=r"res101\.mat: missing image_files"):
        import_xlsa17(res101, att_splits, tmp_path / "out.h5")
    with pytest.raises(PipelineError, match=r"absent\.mat: not found"):
        import_xlsa17(tmp_path / "absent.mat", att_splits, tmp_path / "out.h5")
    # A MATLAB v7.3 file: HDF5 behind a 512-byte MAT header.
    v73 = tmp_path / "v73.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:
        f["features"] = res["features"]
    with open(v73, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    with pytest.raises(PipelineError, match=r"v73\.mat: MATLAB v7\.3 \(HDF5\) files are not supported"):
        import_xlsa17(v73, att_splits, tmp_path / "out.h5")
    with pytest.raises(PipelineError, match="dtype 'float64' not supported"):
        import_xlsa17(res101, att_splits, tmp_path / "out.h5", dtype="float64")


@pytest.mark.parametrize("path,expected", [
    ("/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.A/a.jpg", "CUB_200_2011/images/001.A/a.jpg"),
    ("/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/ox/ox_1.jpg",
     "Animals_with_Attributes2/JPEGImages/ox/ox_1.jpg"),
    ("/BS/Deep_Fragments/work/MSc/data/SUN/images/a/abbey/sun_a.jpg", "images/a/abbey/sun_a.jpg"),
    ("/d/APY/images_att/VOCdevkit/VOC2008/JPEGImages/2008_000001.jpg", "VOCdevkit/VOC2008/JPEGImages/2008_000001.jpg"),
    ("/d/APY/images_att/ayahoo_test_images/bag_227.jpg", "ayahoo_test_images/bag_227.jpg"),
    ("/d/myimages/x.jpg", "/d/myimages/x.jpg"),
    ("relative//x.jpg", "relative/x.jpg"),
])
def test_relative_image_id(path: str, expected: str) -> None:
    assert relative_image_id(path) == expected
