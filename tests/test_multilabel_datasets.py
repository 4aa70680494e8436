"""Multi-label datasets (NUS-WIDE, COCO 48/17, tag tables) and given class-name vectors (``vectors:PATH``)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import write_toy_store

from pipeline.datasets import load_dataset
from pipeline.datasets import nus_wide as nus
from pipeline.datasets.coco import CATEGORY_NAMES, load_coco
from pipeline.datasets.tag_table import load_tag_table
from pipeline.errors import PipelineError
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.semantics.file import SemanticsFile

# --- NUS-WIDE ------------------------------------------------------------------------------------

IMAGES = ["actor/0001_2124494179.jpg", "actor/0002_174174086.jpg", "beach/0001_6201231.jpg",
          "beach/0002_532455.jpg", "dog/0001_9912.jpg", "dog/0002_1234.jpg"]
USER_TAGS = ["beach", "dog", "sunset", "animal", "cute"]  # TagList1k order; dog and animal are also concepts
CONCEPTS = ["dog", "sky", "animal"]
ALL_TAGS = [[0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0]]
TRUTH = {"dog": [0, 0, 0, 0, 1, 1], "sky": [0, 1, 1, 1, 0, 0], "animal": [0, 0, 0, 0, 1, 1]}


def _write_nus_wide(root: Path, user_tags: list[str], concepts: list[str], all_tags: list[list[int]],
                    truth: dict[str, list[int]], images: list[str] = IMAGES) -> Path:
    """The official release's metadata files (Windows line ends), spread over sub-folders as extracted."""
    def write(path: Path, lines: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes("".join(f"{line}\r\n" for line in lines).encode())

    write(root / "ImageList" / "Imagelist.txt", [f"C:\\ImageData\\Flickr\\{p.replace('/', chr(92))}" for p in images])
    write(root / "ImageList" / "TrainImagelist.txt", [p.replace("/", "\\") for p in images[:4]])
    write(root / "ImageList" / "TestImagelist.txt", [p.replace("/", "\\") for p in images[4:]])
    write(root / "meta" / "NUS_WID_Tags" / "TagList1k.txt", user_tags)
    write(root / "meta" / "NUS_WID_Tags" / "AllTags1k.txt", [" ".join(map(str, row)) + " " for row in all_tags])
    write(root / "meta" / "Concepts81.txt", concepts)
    for concept, values in truth.items():
        write(root / "Groundtruth" / "AllLabels" / f"Labels_{concept}.txt", [str(v) for v in values])
    (root / "Flickr" / "actor").mkdir(parents=True)
    (root / "Flickr" / "actor" / "0001_2124494179.jpg").write_bytes(b"not decoded here")
    return root


def test_nus_wide_seen_tags_from_user_tags_and_unseen_from_ground_truth(tmp_path):
    data = load_dataset("nus_wide", _write_nus_wide(tmp_path, USER_TAGS, CONCEPTS, ALL_TAGS, TRUTH))
    assert data.name == "nus_wide" and data.multilabel and len(data) == 6
    assert data.classes == ["animal", "beach", "cute", "dog", "sky", "sunset"]
    assert data.unseen_tags.tolist() == [0, 3, 4]
    assert data.image_ids[0] == "Flickr/actor/0001_2124494179.jpg" and data.path(0).is_file()
    assert (data.labels == -1).all() and data.labels.dtype == np.int64
    assert data.splits["trainval"].tolist() == [0, 1, 2, 3] and data.splits["test"].tolist() == [4, 5]
    col = {c: data.tags[:, i].astype(int).tolist() for i, c in enumerate(data.classes)}
    assert col["beach"] == [0, 1, 1, 0, 0, 0] and col["cute"] == [1, 0, 0, 0, 1, 0]
    assert col["dog"] == TRUTH["dog"]  # the ground truth wins over the user tag 'dog' (row 0 was tagged dog)
    assert col["sky"] == TRUTH["sky"] and col["animal"] == TRUTH["animal"]


def test_nus_wide_names_the_missing_file_and_its_archive(tmp_path):
    root = _write_nus_wide(tmp_path, USER_TAGS, CONCEPTS, ALL_TAGS, TRUTH)
    (root / "Groundtruth" / "AllLabels" / "Labels_sky.txt").unlink()
    with pytest.raises(PipelineError, match="Labels_sky.txt.*Groundtruth.zip"):
        nus.load_nus_wide(root)
    (root / "meta" / "Concepts81.txt").unlink()
    with pytest.raises(PipelineError, match="no Concepts81.txt found below it; extract ConceptsList.zip"):
        nus.load_nus_wide(root)


def test_nus_wide_label_files_must_match_the_image_list(tmp_path):
    root = _write_nus_wide(tmp_path, USER_TAGS, CONCEPTS, ALL_TAGS[:5], TRUTH)
    with pytest.raises(PipelineError, match="AllTags1k.txt: 5 rows but .*Imagelist.txt lists 6"):
        nus.load_nus_wide(root)


def test_binary_matrix_parses_across_chunk_boundaries_and_reports_bad_lines(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    want = rng.random((50, 7)) < 0.3
    path = tmp_path / "m.txt"
    path.write_text("".join(" ".join(map(str, r.astype(int))) + " \r\n" for r in want).rstrip("\r\n"))  # no final newline
    monkeypatch.setattr(nus, "_CHUNK", 11)
    np.testing.assert_array_equal(nus.read_binary_matrix(path, 7), want)
    path.write_text("0 1 0\n1 1 0\n1 2 0\n")
    with pytest.raises(PipelineError, match=r"m.txt:3: expected only 0/1 values, found '2'"):
        nus.read_binary_matrix(path, 3)
    path.write_text("0 1 0\n1 1\n")
    with pytest.raises(PipelineError, match=r"m.txt:2: 2 values, expected 3"):
        nus.read_binary_matrix(path, 3)


def test_nus_wide_class_order_matches_the_sdl_label_set(shared_data, tmp_path):
    """classes.pickle is sorted, 925 user tags + 81 concepts; our construction reproduces it exactly."""
    with open(shared_data / "nus_wide" / "classes.pickle", "rb") as f:
        names = pickle.load(f)
    with open(shared_data / "nus_wide" / "unseen_classes.pickle", "rb") as f:
        unseen = pickle.load(f)
    classes = [names[i] for i in range(len(names))]
    assert len(classes) == 1006 == len(set(classes)) and classes == sorted(classes)
    assert len(unseen) == 81 and set(unseen) <= set(classes)
    seen = [c for c in classes if c not in set(unseen)]
    assert len(seen) == 925
    user_tags = seen + unseen[:75]  # TagList1k holds ~75 of the concepts as user tags too
    all_tags = [[0] * 1000, [1] * 1000, [0] * 1000, [0] * 1000, [0] * 1000, [0] * 1000]
    truth = {c: [0, 0, 1, 0, 0, 0] for c in unseen}
    data = nus.load_nus_wide(_write_nus_wide(tmp_path, user_tags, unseen, all_tags, truth))
    assert data.classes == classes
    assert [data.classes[i] for i in data.unseen_tags] == sorted(unseen)
    unseen_mask = np.isin(np.arange(1006), data.unseen_tags)
    assert data.tags[1, ~unseen_mask].all() and not data.tags[1, unseen_mask].any()
    assert data.tags[2, unseen_mask].all() and not data.tags[2, ~unseen_mask].any()


# --- COCO 2014, 48/17 ----------------------------------------------------------------------------

COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
            *range(84, 91)]
COCO_NAMES = list(CATEGORY_NAMES)
CATEGORIES = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, COCO_NAMES)]
ID = dict(zip(COCO_NAMES, COCO_IDS))


def _instances(path: Path, images: dict[str, list[str]]) -> None:
    """An instances JSON: file name -> names of the objects shown (image ids in reverse file order)."""
    entries = [{"id": 100 - k, "file_name": f} for k, f in enumerate(images)]
    anns = [{"id": len(entries) * 10 + j, "image_id": e["id"], "category_id": ID[name], "iscrowd": 0}
            for e in entries for j, name in enumerate(images[e["file_name"]])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": CATEGORIES}))


@pytest.fixture()
def coco_root(tmp_path) -> Path:
    assert len(COCO_NAMES) == len(COCO_IDS) == 80
    _instances(tmp_path / "annotations" / "instances_train2014.json", {
        "COCO_train2014_3.jpg": ["person", "car"],
        "COCO_train2014_1.jpg": ["person", "dog"],  # shows an unseen object: dropped
        "COCO_train2014_2.jpg": ["bicycle", "bicycle"],
        "COCO_train2014_4.jpg": ["traffic light"],  # in neither the 48 nor the 17: no tag, dropped
        "COCO_train2014_5.jpg": [],
    })
    _instances(tmp_path / "annotations" / "instances_val2014.json", {
        "COCO_val2014_2.jpg": ["dog", "person"],
        "COCO_val2014_1.jpg": ["cat"],
        "COCO_val2014_3.jpg": ["hair drier"],  # none of the 65: dropped
    })
    return tmp_path


def _label_table(root: Path, images: dict[str, list[str]]) -> None:
    """``labels.csv`` of the coco_real layout: file, coco_id, split2014, then 0/1 per category, alphabetical."""
    columns = sorted(n.replace(" ", "_") for n in COCO_NAMES)
    lines = [",".join(["file", "coco_id", "split2014", *columns])]
    for k, (file, shown) in enumerate(images.items()):
        year = file.split("/")[1]
        lines.append(",".join([file, str(k), year, *("1" if c.replace("_", " ") in shown else "0" for c in columns)]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(params=["instances", "label_table"])
def coco_layouts(request, tmp_path, coco_root) -> tuple[Path, str]:
    """The same images and labels as the official annotations or as a label table; image path prefix."""
    if request.param == "instances":
        return coco_root, ""
    root = tmp_path / "table"
    root.mkdir()
    _label_table(root, {"images/train2014/COCO_train2014_3.jpg": ["person", "car"],
                        "images/val2014/COCO_val2014_2.jpg": ["dog", "person"],
                        "images/train2014/COCO_train2014_1.jpg": ["person", "dog"],
                        "images/train2014/COCO_train2014_2.jpg": ["bicycle"],
                        "images/train2014/COCO_train2014_4.jpg": ["traffic light"],
                        "images/val2014/COCO_val2014_1.jpg": ["cat"],
                        "images/val2014/COCO_val2014_3.jpg": ["hair drier"]})
    return root, "images/"


def test_coco_48_17_split_drops_training_images_with_unseen_objects(shared_data, coco_layouts):
    coco_root, prefix = coco_layouts
    data = load_dataset("coco", coco_root, shared_data / "coco" / "cls_ids.pickle")
    assert data.name == "coco" and len(data.classes) == 65 and len(data.unseen_tags) == 17
    assert {data.classes[i] for i in data.unseen_tags} == {
        "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup",
        "knife", "cake", "couch", "keyboard", "sink", "scissors"}
    assert data.classes[:4] == ["person", "bicycle", "car", "motorcycle"] and "traffic light" not in data.classes
    assert data.image_ids == [prefix + f for f in ["train2014/COCO_train2014_2.jpg", "train2014/COCO_train2014_3.jpg",
                                                   "val2014/COCO_val2014_1.jpg", "val2014/COCO_val2014_2.jpg"]]
    assert data.splits["trainval"].tolist() == [0, 1] and data.splits["test"].tolist() == [2, 3]
    shown = [sorted(data.classes[j] for j in np.flatnonzero(row)) for row in data.tags]
    assert shown == [["bicycle"], ["car", "person"], ["cat"], ["dog", "person"]]
    assert (data.labels == -1).all()


def test_coco_needs_its_split_file_and_annotations(shared_data, coco_root):
    with pytest.raises(PipelineError, match="--splits .*cls_ids.pickle"):
        load_dataset("coco", coco_root)
    (coco_root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(PipelineError, match="instances_val2014.json: not found; extract annotations_trainval2014"):
        load_coco(coco_root, shared_data / "coco" / "cls_ids.pickle")
    (coco_root / "labels.csv").write_text("file,split2014,person\nimages/train2014/a.jpg,train2014,1\n")
    with pytest.raises(PipelineError, match="labels.csv: no column bicycle, car, motorcycle ... in the header"):
        load_coco(coco_root, shared_data / "coco" / "cls_ids.pickle")


def test_coco_label_table_of_the_real_photos(shared_data):
    """``../shared/data/coco_real``: 4,948 train2014 and 1,220 val2014 photos under the 48/17 protocol."""
    data = load_dataset("coco", shared_data / "coco_real", shared_data / "coco" / "cls_ids.pickle")
    trainval, test = data.tags[data.splits["trainval"]], data.tags[data.splits["test"]]
    assert (len(trainval), len(test)) == (2751, 1196)
    assert not trainval[:, data.unseen_tags].any() and trainval.any(axis=1).all() and test.any(axis=1).all()
    assert test[:, data.unseen_tags].any(axis=1).sum() == 507 and test[:, data.unseen_tags].any(axis=0).all()
    assert all((shared_data / "coco_real" / data.image_ids[i]).is_file() for i in (0, len(data.image_ids) - 1))


# --- tag tables ----------------------------------------------------------------------------------

def test_tag_table_classes_tags_and_splits(tmp_path):
    (tmp_path / "tags.csv").write_text("image,tags,split,note\n"
                                       "img/a.jpg,dog; beach,trainval,x\n"
                                       "img/b.jpg,cat,test,\n"
                                       "img/c.jpg,,trainval,\n"
                                       '"img/d, e.jpg",beach;cat;dog,test,\n')
    (tmp_path / "unseen.txt").write_text("cat\n\n")
    data = load_dataset("tags", tmp_path, tmp_path / "unseen.txt")
    assert data.name == "tags" and data.root == tmp_path and data.image_ids[3] == "img/d, e.jpg"
    assert data.classes == ["beach", "cat", "dog"] and data.unseen_tags.tolist() == [1]
    assert data.tags.astype(int).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert data.splits["trainval"].tolist() == [0, 2] and data.splits["test"].tolist() == [1, 3]
    (tmp_path / "mine.tsv").write_text("split\timage\ttags\ntest\tx.png\tsky;sea\n")
    (tmp_path / "sky.txt").write_text("sky\n")
    tsv = load_tag_table(tmp_path / "mine.tsv", tmp_path / "sky.txt")
    assert tsv.name == "mine" and tsv.classes == ["sea", "sky"] and tsv.unseen_tags.tolist() == [1]


def test_tag_table_errors_name_the_fix(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image,tags,split\na.jpg,dog,trainval\n")
    (tmp_path / "unseen.txt").write_text("unicorn\n")
    with pytest.raises(PipelineError, match="unseen.txt: tag 'unicorn' does not occur in .*t.csv"):
        load_tag_table(table, tmp_path / "unseen.txt")
    with pytest.raises(PipelineError, match="pass --splits unseen.txt"):
        load_dataset("tags", table)
    table.write_text("image,tags,split\na.jpg,dog,train\n")
    with pytest.raises(PipelineError, match="t.csv:2: need an image path and a split"):
        load_tag_table(table, tmp_path / "unseen.txt")
    table.write_text("image,labels,split\na.jpg,dog,test\n")
    with pytest.raises(PipelineError, match="no column tags"):
        load_tag_table(table, tmp_path / "unseen.txt")


# --- vectors:PATH class-name vectors -------------------------------------------------------------

def _feature_file(path: Path, classes: list[str]) -> Path:
    """A (pending) feature store whose only role here is to fix the class list and order."""
    return write_toy_store(path, np.arange(len(classes)), classes)


def _pickle(path: Path, obj: object) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_vectors_in_class_order_and_matched_by_name(tmp_path):
    classes = ["zebra", "ant", "cat"]
    features = _feature_file(tmp_path / "f.h5", classes)
    by_column = np.arange(12, dtype=np.float64).reshape(4, 3)  # [E, C]: column i = class i
    cfg = SemanticsConfig(text=(f"vectors:{_pickle(tmp_path / 'v.pickle', by_column)}",))
    out = tmp_path / "sem.h5"
    assert build_semantics(features, out, cfg) == ["text/vectors"]
    with SemanticsFile(out) as sem:
        np.testing.assert_array_equal(sem.text("vectors"), by_column.T)
        assert sem.provenance("text/vectors")["shape"] == [4, 3]

    rows = np.arange(20, dtype=np.float16).reshape(1, 4, 5)  # [1, K, E] with names listed in another order
    np.save(tmp_path / "v.npy", rows)
    names = tmp_path / "names.txt"
    names.write_text("cat\nzebra\ndog\nant\n")
    cfg = SemanticsConfig(text=(f"vectors:{tmp_path / 'v.npy'}",), vector_names=str(names))
    assert build_semantics(features, out, cfg) == ["text/vectors"]
    with SemanticsFile(out) as sem:
        np.testing.assert_array_equal(sem.text("vectors"), rows[0][[1, 3, 0]])
        assert sem.provenance("text/vectors")["vector_names"] == str(names)
    assert build_semantics(features, out, cfg) == []
    _pickle(tmp_path / "names.pickle", {0: "cat", 1: "zebra", 2: "ant", 3: "dog"})
    names.write_text("cat\nant\ndog\nzebra\n")  # a changed names file is noticed
    assert build_semantics(features, out, cfg) == ["text/vectors"]
    with SemanticsFile(out) as sem:
        np.testing.assert_array_equal(sem.text("vectors"), rows[0][[3, 1, 0]])
    by_dict = SemanticsConfig(text=cfg.text, vector_names=str(tmp_path / "names.pickle"))
    build_semantics(features, out, by_dict)
    with SemanticsFile(out) as sem:
        np.testing.assert_array_equal(sem.text("vectors"), rows[0][[1, 2, 0]])


def test_vectors_errors_name_the_file(tmp_path):
    features = _feature_file(tmp_path / "f.h5", ["zebra", "ant", "cat"])
    out = tmp_path / "sem.h5"
    np.save(tmp_path / "v.npy", np.ones((4, 5)))
    with pytest.raises(PipelineError, match=r"v.npy: array of shape \(4, 5\) has no axis of the 3 classes; pass"):
        build_semantics(features, out, SemanticsConfig(text=(f"vectors:{tmp_path / 'v.npy'}",)))
    (tmp_path / "n.txt").write_text("cat\nzebra\ndog\nemu\n")
    with pytest.raises(PipelineError, match=r"n.txt: no vector for 1 of 3 classes \(first: 'ant'\)"):
        build_semantics(features, out, SemanticsConfig(text=(f"vectors:{tmp_path / 'v.npy'}",),
                                                       vector_names=str(tmp_path / "n.txt")))
    bad = np.ones((3, 2), np.float32)
    bad[1, 0] = np.nan
    path = _pickle(tmp_path / "bad.pkl", {"wordvec_array": bad, "note": "x"})
    with pytest.raises(PipelineError, match="bad.pkl: non-finite values"):
        build_semantics(features, out, SemanticsConfig(text=(f"vectors:{path}",)))


def test_real_nus_wide_and_coco_word_vectors(shared_data, tmp_path, coco_root):
    with open(shared_data / "nus_wide" / "classes.pickle", "rb") as f:
        names = pickle.load(f)
    classes = [names[i] for i in range(len(names))]
    order = list(np.random.default_rng(0).permutation(classes))
    vectors = shared_data / "nus_wide" / "wordvec_array.pickle"
    with open(vectors, "rb") as f:
        array = pickle.load(f)
    cfg = SemanticsConfig(text=(f"vectors:{vectors}",), vector_names=str(shared_data / "nus_wide" / "classes.pickle"))
    build_semantics(_feature_file(tmp_path / "nus.h5", order), tmp_path / "nus_sem.h5", cfg)
    with SemanticsFile(tmp_path / "nus_sem.h5") as sem:
        values = sem.text("vectors")
        assert values.shape == (1006, 300) and values.dtype == np.float32
        np.testing.assert_array_equal(values, array[:, [classes.index(c) for c in order]].T)

    coco = load_dataset("coco", coco_root, shared_data / "coco" / "cls_ids.pickle")
    vectors = shared_data / "coco" / "wordvec_array.pickle"
    cfg = SemanticsConfig(text=(f"vectors:{vectors}",),
                          vector_names=str(coco_root / "annotations" / "instances_val2014.json"))
    build_semantics(_feature_file(tmp_path / "coco.h5", coco.classes), tmp_path / "coco_sem.h5", cfg)
    with open(vectors, "rb") as f:
        array = pickle.load(f)["wordvec_array"][0]
    with SemanticsFile(tmp_path / "coco_sem.h5") as sem:
        assert sem.text("vectors").shape == (65, 300)
        np.testing.assert_array_equal(sem.text("vectors"), array[:, [COCO_NAMES.index(c) for c in coco.classes]].T)
