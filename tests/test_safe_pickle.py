"""User files never run code and outputs are never half-written: crafted pickles are refused at every entry point, real files still load, metrics are replaced whole."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets.coco import read_cls_ids
from pipeline.errors import PipelineError
from pipeline.models import make_model
from pipeline.models.base import Semantics, Split
from pipeline.safe_pickle import load_pickle
from pipeline.semantics.attributes import read_attribute_vectors
from pipeline.semantics.build import is_file_name
from pipeline.semantics.vector_files import read_vector_array, read_vector_names
from pipeline.train import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this object calls ``os.system`` (a shell command creating a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "vectors.pickle"
    path.write_bytes(pickle.dumps({"train": [1], "test": [2], "vectors": _Payload(marker)}))
    return path, marker


@pytest.mark.parametrize("entry", ["vectors", "vector_names", "attribute_vectors", "coco_split", "any"])
def test_a_crafted_pickle_is_refused_at_every_entry_point(crafted, entry):
    path, marker = crafted
    load = {"vectors": read_vector_array, "vector_names": read_vector_names, "coco_split": read_cls_ids,
            "attribute_vectors": lambda p: read_attribute_vectors(p, 3), "any": load_pickle}[entry]
    with pytest.raises(PipelineError, match=r"vectors.pickle: refused to unpickle (posix|os)\.system") as err:
        load(path)
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_checkpoint_holding_objects_is_refused_and_real_ones_load(tmp_path: Path):
    marker = tmp_path / "code-ran"
    torch.save({"model": "eszsl", "hparams": {}, "state": {"V": _Payload(marker)}}, tmp_path / "evil.pt")
    with pytest.raises(PipelineError, match="evil.pt: not a model checkpoint this package can load safely"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(os.urandom(256))
    with pytest.raises(PipelineError, match="junk.pt: not a model checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")

    rng = np.random.default_rng(0)
    model = make_model("eszsl")
    log = model.fit(Split(rng.normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2), np.arange(2),
                    Semantics(rng.normal(size=(3, 5)).astype(np.float32)), seed=0)
    checkpoint = {"model": "eszsl", "hparams": model.hparams, "state": model.state(), "gamma": np.float64(0.5),
                  "seen": [0, 1], "fit": log, "classes": ["a", "b", "c"], "config": {"semantics": "attributes", "seed": 0},
                  "validation": {}}
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    restored, saved = load_checkpoint(tmp_path / "model.pt")
    np.testing.assert_array_equal(np.asarray(restored.state()["V"]), model.state()["V"])
    assert saved["gamma"] == 0.5 and type(saved["gamma"]) is float


def test_the_real_pickles_of_the_field_still_load(shared_data: Path):
    nus, coco, w2v = shared_data / "nus_wide", shared_data / "coco", shared_data / "gbu_attribute_w2v"
    assert read_vector_array(nus / "wordvec_array.pickle").shape == (300, 1006)
    assert read_vector_array(coco / "wordvec_array.pickle").shape == (300, 80)
    assert len(read_vector_names(nus / "classes.pickle")) == 1006
    assert [len(ids) for ids in read_cls_ids(coco / "cls_ids.pickle")] == [48, 17]
    for name, n in (("CUB", 312), ("AWA2", 85), ("SUN", 102)):
        assert read_attribute_vectors(w2v / f"{name}_attribute.pkl", n).shape == (n, 300)


def test_an_encoder_name_is_never_read_as_a_file():
    assert not is_file_name("minilm") and not is_file_name("glove") and not is_file_name("glove:/data/g.txt")
    assert is_file_name("w2v/CUB_attribute.pkl") and is_file_name("CUB_attribute.pkl")
    assert is_file_name("./attributes")


def test_metrics_are_written_whole_or_not_at_all(tmp_path: Path):
    from pipeline.evaluate import write_metrics

    path = tmp_path / "metrics.json"
    write_metrics({"czsl": {"acc": 0.5}}, path)
    (tmp_path / "metrics.json.partial").mkdir()  # the temporary name cannot be written: as on a full disk
    with pytest.raises(PipelineError, match="metrics.json: cannot write the metrics .*metrics.json is unchanged"):
        write_metrics({"czsl": {"acc": 0.9}}, path)
    assert path.read_text() == '{\n  "czsl": {\n    "acc": 0.5\n  }\n}\n'


class _HugeArray:
    """Pickled, it asks numpy for a 10 TB array when loaded (allowed classes only: numpy.ndarray)."""

    def __reduce__(self):
        return (np.ndarray, ((10**13,), "u1"))


def test_a_pickle_asking_for_a_huge_array_is_one_line(tmp_path):
    bomb = tmp_path / "vectors.pkl"
    bomb.write_bytes(pickle.dumps(_HugeArray()))
    assert len(bomb.read_bytes()) < 200
    with pytest.raises(PipelineError, match="vectors.pkl: cannot unpickle: it asks for more memory than there is"):
        load_pickle(bomb)
