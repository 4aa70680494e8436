"""Real multi-label photos: a few hundred of the MS-COCO photos of ../shared/data/coco_real through the real
``coco`` loader (its label-table layout, Bansal's 48/17 split), the authors' COCO word vectors, and SDL
trained and evaluated end to end (benchmarks/coco.py runs every photo; README "Real images: MS-COCO").
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.backbones import load_backbone
from pipeline.datasets import load_dataset
from pipeline.datasets.coco import CATEGORY_NAMES
from pipeline.evaluate import evaluate
from pipeline.extract import extract
from pipeline.inputs import load_inputs
from pipeline.models import make_model
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.train import TrainConfig, train

N_TRAIN2014, N_VAL2014 = 500, 300  # the first rows of each year in labels.csv


@pytest.fixture(scope="module")
def coco(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(features, semantics) of a label table holding the first photos of each year (the protocol keeps
    ~280 training and ~290 test photos): the default backbone at 224 px, pooled; the authors' vectors."""
    work = tmp_path_factory.mktemp("coco")
    real = shared_data / "coco_real"
    root = work / "coco"
    root.mkdir()
    os.symlink(real / "images", root / "images")
    header, *rows = (real / "labels.csv").read_text().splitlines()
    train = [r for r in rows if ",train2014," in r][:N_TRAIN2014]
    val = [r for r in rows if ",val2014," in r][:N_VAL2014]
    (root / "labels.csv").write_text("\n".join([header, *train, *val]) + "\n")
    features, semantics = work / "features.h5", work / "semantics.h5"
    dataset = load_dataset("coco", root, shared_data / "coco" / "cls_ids.pickle")
    extract(dataset, load_backbone("efficientnet_lite0", "imagenet", 224), features, grid=False)
    names = work / "names.txt"
    names.write_text("\n".join(CATEGORY_NAMES) + "\n")
    build_semantics(features, semantics, SemanticsConfig(
        text=(f"vectors:{shared_data / 'coco' / 'wordvec_array.pickle'}",), vector_names=str(names)))
    return features, semantics


def test_sdl_tags_unseen_objects_in_real_coco_photos_well_above_a_random_ranking(coco, tmp_path):
    features, semantics = coco
    inputs = load_inputs(features, semantics, "text:vectors")
    assert len(inputs.classes) == 65 and len(inputs.unseen_tags) == 17
    assert 250 <= len(inputs.splits["trainval"]) and 250 <= len(inputs.splits["test"])
    checkpoint = train(inputs, TrainConfig(model="sdl", semantics="text:vectors"))
    model = make_model("sdl", **checkpoint["hparams"])
    model.load_state(checkpoint["state"])
    metrics = evaluate(model, checkpoint, inputs, tmp_path)
    # measured on these photos: ZSL mAP 0.139 (random ranking 0.048), GZSL mAP 0.344 (random 0.056)
    assert metrics["zsl"]["mAP"] >= 2.5 * metrics["zsl"]["mAP_random"]
    assert metrics["gzsl"]["mAP"] >= 4 * metrics["gzsl"]["mAP_random"]
