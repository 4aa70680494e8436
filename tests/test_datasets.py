"""Dataset adapters: class-per-folder trees and the GBU benchmarks in their original archive layouts."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.choices import DATASETS
from pipeline.datasets import LOADERS, load_dataset
from pipeline.datasets.folder import load_folder
from pipeline.datasets.gbu import load_gbu, read_att_splits
from pipeline.errors import PipelineError

# The prefix every ``image_files`` entry of gbu_images/<NAME>.pkl carries before the path
# ``load_gbu`` reports relative to its root (AWA2's double slash is in the benchmark table).
PREFIX = {"CUB": "CUB_200_2011/", "AWA2": "Animals_with_Attributes2//", "SUN": ""}
ATT_SHAPE = {"CUB": (200, 312), "AWA2": (50, 85), "SUN": (717, 102)}


def _image(path: Path, fmt: str, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path, format=fmt)


# ---------------------------------------------------------------- class-per-folder trees


def test_folder_classes_images_and_nesting(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    _image(root / "n02/b.png", "PNG")
    _image(root / "n02/a.JPG", "JPEG")
    _image(root / "n01/z/deep/c.jpeg", "JPEG")
    _image(root / "n01/y.webp", "WEBP")
    _image(root / "cat/x.bmp", "BMP")
    (root / "n01/notes.txt").write_text("not an image")
    (root / "n01/._y.jpg").write_bytes(b"macOS resource fork")
    _image(root / "loose.png", "PNG")  # not in a class folder: ignored

    ds = load_folder(root)
    assert ds.name == "tiny" and ds.root == root
    assert ds.classes == ["cat", "n01", "n02"]
    assert ds.image_ids == ["cat/x.bmp", "n01/y.webp", "n01/z/deep/c.jpeg", "n02/a.JPG", "n02/b.png"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 2]
    assert ds.splits == {}
    with Image.open(ds.path(2)) as im:
        assert im.size == (8, 6)
    assert load_folder(root, name="custom").name == "custom"


def test_folder_with_unseen_list_is_a_zero_shot_dataset(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for c, n in (("cat", 5), ("dog", 5), ("owl", 1), ("yak", 3)):
        for i in range(n):
            _image(root / c / f"{i}.png", "PNG")
    (tmp_path / "unseen.txt").write_text("# never trained on\nyak\n")
    ds = load_folder(root, unseen=tmp_path / "unseen.txt")
    by_class = {name: {ds.classes[c] for c in ds.labels[ds.splits[name]]} for name in ds.splits}
    assert by_class == {"trainval": {"cat", "dog", "owl"}, "test_seen": {"cat", "dog"}, "test_unseen": {"yak"}}
    assert [len(ds.splits[n]) for n in ("trainval", "test_seen", "test_unseen")] == [4 + 4 + 1, 1 + 1, 3]
    assert load_folder(root, unseen=tmp_path / "unseen.txt").splits["test_seen"].tolist() == \
        ds.splits["test_seen"].tolist()  # the same draw every time
    (tmp_path / "typo.txt").write_text("yek\n")
    with pytest.raises(PipelineError, match="did you mean 'yak'"):
        load_folder(root, unseen=tmp_path / "typo.txt")
    (tmp_path / "all.txt").write_text("cat\ndog\nowl\nyak\n")
    with pytest.raises(PipelineError, match="between 1 and 3"):
        load_folder(root, unseen=tmp_path / "all.txt")


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found"):
        load_folder(tmp_path / "absent")
    (tmp_path / "empty/cls").mkdir(parents=True)
    (tmp_path / "empty/cls/readme.txt").write_text("x")
    _image(tmp_path / "empty/top.png", "PNG")
    with pytest.raises(PipelineError, match="no images"):
        load_folder(tmp_path / "empty")


# ---------------------------------------------------------------- GBU benchmarks


@pytest.fixture(scope="module", params=["CUB", "AWA2", "SUN"])
def gbu_archive(request: pytest.FixtureRequest, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(name, root of a fake archive of empty files at the real paths, per-image table, splits file)."""
    name = request.param
    with open(shared_data / "gbu_images" / f"{name}.pkl", "rb") as f:
        table = pickle.load(f)
    base = tmp_path_factory.mktemp(name)
    root = base / PREFIX[name].strip("/") if PREFIX[name] else base
    rel = [p[len(PREFIX[name]):] for p in table["image_files"]]
    for d in {str(Path(p).parent) for p in rel}:
        (root / d).mkdir(parents=True, exist_ok=True)
    for p in rel:
        open(root / p, "xb").close()
    return name, root, table, shared_data / "gbu" / name / "att_splits.mat"


def test_gbu_matches_benchmark_tables(gbu_archive) -> None:
    name, root, table, splits_file = gbu_archive
    ds = load_gbu(name.lower(), root, splits_file)
    mat = scipy.io.loadmat(str(splits_file))
    assert ds.name == name and ds.root == root
    assert [PREFIX[name] + p for p in ds.image_ids] == list(table["image_files"])
    np.testing.assert_array_equal(ds.labels, table["labels"])
    assert ds.classes == [str(c[0][0]) for c in mat["allclasses_names"]]
    assert set(ds.splits) == {"trainval", "test_seen", "test_unseen"}
    for split, idx in ds.splits.items():  # the mat's locs are unsorted; splits hold them sorted
        np.testing.assert_array_equal(idx, np.sort(mat[f"{split}_loc"].ravel().astype(np.int64) - 1))
        np.testing.assert_array_equal(idx, np.sort(table[f"{split}_loc"]))
    assert set(ds.labels[ds.splits["test_unseen"]]) == set(table["unseenclasses"].tolist())
    assert set(ds.labels[ds.splits["trainval"]]) == set(table["seenclasses"].tolist())
    assert ds.path(0).is_file()


def test_gbu_missing_or_foreign_image(gbu_archive) -> None:
    name, root, table, splits_file = gbu_archive
    n = len(table["image_files"])
    victim = root / table["image_files"][n // 2][len(PREFIX[name]):]
    victim.unlink()
    try:
        with pytest.raises(PipelineError, match=f"found {n - 1} images under {re.escape(str(root))}.*expects {n}"):
            load_gbu(name, root, splits_file)
    finally:
        victim.touch()
    stray = victim.parent.parent / "not_a_class" / "x.jpg"
    stray.parent.mkdir()
    stray.touch()
    try:
        with pytest.raises(PipelineError, match="class '.*not_a_class' is not in allclasses_names"):
            load_gbu(name, root, splits_file)
    finally:
        stray.unlink()
        stray.parent.rmdir()


def test_gbu_root_and_name_errors(shared_data: Path, tmp_path: Path) -> None:
    splits_file = shared_data / "gbu" / "CUB" / "att_splits.mat"
    (tmp_path / "CUB_200_2011" / "images").mkdir(parents=True)
    with pytest.raises(PipelineError, match="root must be the CUB_200_2011 folder"):
        load_gbu("CUB", tmp_path, splits_file)
    with pytest.raises(PipelineError, match="unknown GBU dataset 'APY'"):
        load_gbu("APY", tmp_path, splits_file)
    with pytest.raises(PipelineError, match="found 0 images"):
        load_gbu("CUB", tmp_path / "CUB_200_2011", splits_file)


@pytest.mark.parametrize("name", ["CUB", "AWA2", "SUN"])
def test_read_att_splits(shared_data: Path, name: str) -> None:
    path = shared_data / "gbu" / name / "att_splits.mat"
    meta = read_att_splits(path)
    mat = scipy.io.loadmat(str(path))
    assert meta["att"].shape == meta["original_att"].shape == ATT_SHAPE[name]
    np.testing.assert_array_equal(meta["att"], mat["att"].T)
    np.testing.assert_allclose(np.linalg.norm(meta["att"], axis=1), 1.0)
    assert len(meta["classes"]) == ATT_SHAPE[name][0]
    assert all(isinstance(c, str) for c in meta["classes"])
    if name == "CUB":  # not alphabetical: the 150 seen classes come first
        assert meta["classes"][:2] == ["002.Laysan_Albatross", "003.Sooty_Albatross"]
        assert meta["classes"] == (shared_data / "gbu" / "CUB" / "allclasses.txt").read_text().split()
    assert meta["splits"]["trainval"].dtype == np.int64 and meta["splits"]["trainval"].min() >= 0


def test_read_att_splits_variants_and_errors(shared_data: Path, tmp_path: Path) -> None:
    awa1 = read_att_splits(shared_data / "gbu" / "AWA1" / "att_splits.mat")
    assert set(awa1["splits"]) == {"trainval", "train", "val", "test_seen", "test_unseen"}
    np.testing.assert_array_equal(
        np.sort(np.concatenate([awa1["splits"]["train"], awa1["splits"]["val"]])), awa1["splits"]["trainval"]
    )
    binary = read_att_splits(shared_data / "gbu" / "AWA2" / "binaryAtt_splits.mat")
    assert binary["original_att"] is None and set(np.unique(binary["att"])) == {0.0, 1.0}

    with pytest.raises(PipelineError, match="not found"):
        read_att_splits(tmp_path / "absent.mat")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(PipelineError, match=f"{re.escape(str(bad))}: cannot read"):
        read_att_splits(bad)
    partial = tmp_path / "partial.mat"
    scipy.io.savemat(partial, {"att": np.ones((3, 2)), "trainval_loc": np.array([[1]])})
    with pytest.raises(PipelineError, match=f"{re.escape(str(partial))}: missing allclasses_names, test_seen_loc, test_unseen_loc"):
        read_att_splits(partial)


def test_every_dataset_the_command_line_offers_has_a_loader_that_says_which_splits_file_it_needs(tmp_path):
    assert tuple(LOADERS) == DATASETS
    with pytest.raises(PipelineError, match="awa2: pass --splits /path/to/xlsa17/data/AWA2/att_splits.mat"):
        load_dataset("awa2", tmp_path)
    with pytest.raises(PipelineError, match="synthetic: --splits x.txt would be ignored"):
        load_dataset("synthetic", tmp_path, Path("x.txt"))
    with pytest.raises(PipelineError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", tmp_path)
