"""Real birds: the 600 CUB-200-2011 photos of ../shared/data/cub_mini (3 per class, GBU splits re-indexed
onto them) through the real ``cub`` loader, GBU attributes and the authors' attribute-name vectors, then
ESZSL and MSDN end to end (benchmarks/cub.py runs every model on all 11,788 photos; README "Real images: CUB").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.backbones import load_backbone
from pipeline.datasets.gbu import load_gbu
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate
from pipeline.extract import extract
from pipeline.inputs import load_inputs
from pipeline.models import make_model
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.store import FeatureStore
from pipeline.train import TrainConfig, train


@pytest.fixture(scope="module")
def cub(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(features, semantics): the default backbone at 224 px with its 7×7 grid; GBU attributes and
    MSDN's 300-d attribute-name vectors."""
    work = tmp_path_factory.mktemp("cub")
    mini = shared_data / "cub_mini"
    features, semantics = work / "features.h5", work / "semantics.h5"
    dataset = load_gbu("cub", mini / "CUB_200_2011", mini / "att_splits.mat")
    extract(dataset, load_backbone("efficientnet_lite0", "imagenet", 224), features, grid=True)
    vectors = shared_data / "gbu_attribute_w2v"
    build_semantics(features, semantics, SemanticsConfig(
        attributes=str(mini / "att_splits.mat"), attribute_names=str(vectors / "CUB_attributes.txt"),
        attribute_vectors=str(vectors / "CUB_attribute.pkl")))
    return features, semantics


def _metrics(model: str, features: Path, semantics: Path, plots: Path, **fixed) -> tuple[dict, dict]:
    inputs = load_inputs(features, semantics, "attributes")
    checkpoint = train(inputs, TrainConfig(model=model, semantics="attributes", hparams=fixed))
    trained = make_model(checkpoint["model"], **checkpoint["hparams"])
    trained.load_state(checkpoint["state"])
    return checkpoint, evaluate(trained, checkpoint, inputs, plots)


def test_the_cub_loader_reads_the_gbu_split_of_real_photos(cub):
    features, _ = cub
    with FeatureStore(features) as store:
        splits, labels, classes = store.splits, store.labels, store.classes
        assert store.complete and store.has_grid and len(store) == 600
    assert len(classes) == 200 and "001.Black_footed_Albatross" in classes  # in allclasses_names order
    unseen = np.unique(labels[splits["test_unseen"]])
    assert len(unseen) == 50 and not set(unseen) & set(labels[splits["trainval"]])


# measured on these 600 photos (2 training images per seen class), CZSL / H: eszsl 0.447 / 0.283, msdn 0.393 / 0.323
@pytest.mark.parametrize("model,floor", [("eszsl", 0.3), ("msdn", 0.2)])
def test_attribute_models_recognise_unseen_birds_well_above_chance(model, floor, cub, tmp_path):
    features, semantics = cub
    checkpoint, metrics = _metrics(model, features, semantics, tmp_path)
    assert metrics["czsl"]["chance"] == pytest.approx(0.02)
    assert metrics["czsl"]["acc"] >= floor  # 10x chance among the 50 unseen classes
    assert metrics["gzsl"]["H"] >= floor / 2


def test_a_cub_root_missing_images_names_the_count_and_the_first_missing_file(shared_data, tmp_path):
    """A partly copied archive: the loader says how many images it found, how many the split expects
    and, from the archive's images.txt, the first one missing."""
    mini = shared_data / "cub_mini" / "CUB_200_2011"
    images = sorted(p.relative_to(mini / "images").as_posix() for p in (mini / "images").glob("*/*.jpg"))
    root = tmp_path / "CUB_200_2011"
    for name in images[:7] + images[8:]:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(mini / "images" / name, root / "images" / name)
    (root / "images.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(images, start=1)))
    with pytest.raises(PipelineError) as error:
        load_gbu("cub", root, shared_data / "cub_mini" / "att_splits.mat")
    message = str(error.value)
    assert "\n" not in message and "found 599 images" in message and "expects 600" in message
    assert f"1 of the 600 in images.txt missing, first: {root / 'images' / images[7]}" in message
