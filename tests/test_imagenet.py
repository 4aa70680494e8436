"""ImageNet zero-shot layout (1K train / 21K test wnids): the adapter, its errors, and a run end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.backbones import load_backbone
from pipeline.datasets import load_dataset
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate, read_candidate_sets
from pipeline.extract import extract
from pipeline.inputs import load_inputs
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.store import FeatureStore
from pipeline.train import TrainConfig, load_checkpoint, save_checkpoint, train


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(folder / f"{folder.name}_{i}.JPEG")


@pytest.fixture
def real_split(shared_data: Path) -> Path:
    return shared_data / "imagenet" / "imagenet-split.json"


def test_layout_splits_and_classes(real_split: Path, tmp_path: Path) -> None:
    split = json.loads(real_split.read_text())
    train, test = split["train"][:3], split["test"][:2]
    for i, wnid in enumerate(train):
        _images(tmp_path / "train" / wnid, 2, i)
    _images(tmp_path / "val" / train[1], 1, 10)
    for i, wnid in enumerate(test):
        _images(tmp_path / "test" / wnid / "sub", 2, 20 + i)  # any depth below the class folder
    _images(tmp_path / "test" / train[0], 3, 30)  # a 1K class inside the 21K tree: not a test image
    (tmp_path / "test" / "README.txt").write_text("not an image")

    data = load_dataset("imagenet", tmp_path, real_split)
    assert data.classes == split["train"] + split["test"] and len(data.classes) == 21842
    assert len(data) == 6 + 1 + 4
    assert data.image_ids[0] == f"train/{train[0]}/{train[0]}_0.JPEG"
    assert data.image_ids[6] == f"val/{train[1]}/{train[1]}_0.JPEG"
    first = min(test)  # images are in path order
    assert data.image_ids[7] == f"test/{first}/sub/sub_0.JPEG"
    assert {k: v.tolist() for k, v in data.splits.items()} == {
        "trainval": list(range(6)), "test_seen": [6], "test_unseen": [7, 8, 9, 10]}
    test_labels = [1000 + test.index(w) for w in sorted(test) for _ in range(2)]
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2, 1, *test_labels]
    assert all(data.path(i).is_file() for i in range(len(data)))


def test_errors_name_the_folder_or_file(real_split: Path, tmp_path: Path) -> None:
    split = json.loads(real_split.read_text())
    with pytest.raises(PipelineError, match="imagenet-split.json"):
        load_dataset("imagenet", tmp_path)
    _images(tmp_path / "train" / split["train"][0], 1, 0)
    with pytest.raises(PipelineError, match="test: not found"):
        load_dataset("imagenet", tmp_path, real_split)
    _images(tmp_path / "test" / split["train"][1], 1, 1)
    with pytest.raises(PipelineError, match="no images of the test classes"):
        load_dataset("imagenet", tmp_path, real_split)
    _images(tmp_path / "train" / split["test"][0], 1, 2)
    with pytest.raises(PipelineError, match=f"train/{split['test'][0]}: .* not one of the 1000 train classes"):
        load_dataset("imagenet", tmp_path, real_split)
    overlapping = tmp_path / "bad.json"
    overlapping.write_text(json.dumps({"train": split["train"][:2], "test": split["train"][1:3]}))
    with pytest.raises(PipelineError, match="bad.json: a wnid is listed twice"):
        load_dataset("imagenet", tmp_path, overlapping)
    overlapping.write_text(json.dumps({"train": split["train"]}))
    with pytest.raises(PipelineError, match="bad.json: not an ImageNet split file"):
        load_dataset("imagenet", tmp_path, overlapping)


# Real wnids: mammals and birds seen in training, related species unseen.
TRAIN = ["n02391049", "n02374451", "n02085620", "n02123045", "n01530575", "n01531178"]  # zebra horse chihuahua ...
TEST = ["n02389026", "n02086240", "n02124075", "n01532829"]  # sorrel, shih-tzu, egyptian cat, house finch


def test_end_to_end_without_seen_test_images(tmp_path: Path, shared_data: Path) -> None:
    root, split = tmp_path / "imagenet", tmp_path / "split.json"
    split.write_text(json.dumps({"train": TRAIN, "test": TEST}))
    for i, wnid in enumerate(TRAIN + TEST):
        _images(root / ("train" if wnid in TRAIN else "test") / wnid, 4, i)
    features, semantics = tmp_path / "features.h5", tmp_path / "semantics.h5"
    result = extract(load_dataset("imagenet", root, split), load_backbone("resnet18", "none", 32), features,
                     workers=0)
    assert result.written == 40
    with FeatureStore(features) as store:
        assert len(store.splits["test_seen"]) == 0 and store.classes == TRAIN + TEST
    build_semantics(features, semantics, SemanticsConfig(text=("glove",), graph="wordnet"))

    inputs = load_inputs(features, semantics, "text:glove")
    checkpoint = train(inputs, TrainConfig(model="joint_gcn", select=False, hparams={"epochs": 5}))
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"2-hops": TEST[:2], "all": TEST}))
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    model, saved = load_checkpoint(tmp_path / "model.pt")
    metrics = evaluate(model, saved, inputs, tmp_path / "plots", read_candidate_sets(sets, inputs.classes),
                       ks=(1, 2))
    assert "gzsl" not in metrics and not (tmp_path / "plots" / "figures" / "seen_unseen.png").exists()
    assert metrics["czsl"]["chance"] == 0.25
    assert sorted(metrics["hit@k"]) == ["2-hops", "2-hops+train", "2-hops+train_calibrated", "all", "all+train",
                                        "all+train_calibrated"]
    assert metrics["hit@k"]["2-hops"]["hit@2"] == 1.0  # two candidates: always within the top 2

    # DGP's own imagenet-testsets.json, unmodified: each set reports the k it can have, the others are named
    # (this split's 4 test classes are ILSVRC ones, in DGP's "train" set and none of its test sets)
    dgp = read_candidate_sets(shared_data / "imagenet" / "imagenet-testsets.json", inputs.classes)
    metrics = evaluate(model, saved, inputs, tmp_path / "plots", dgp)
    assert sorted(metrics["hit@k"]) == ["train", "train+train", "train+train_calibrated"]
    assert metrics["hit@k"]["train"].keys() == {"hit@1", "hit@2"}
    skipped = metrics["hit@k_skipped"]
    assert skipped["train"] == "hit@5, hit@10, hit@20: only 4 candidate classes"
    assert all(skipped[name] == "no test image of its classes" for name in ("2-hops", "3-hops", "all", "awa2-test"))
    only_large = evaluate(model, saved, inputs, tmp_path / "plots", ks=(100000,))  # no k fits 4 classes: none
    assert only_large["czsl"].keys() == {"acc", "chance"}
