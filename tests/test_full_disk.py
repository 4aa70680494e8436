"""A full disk never corrupts or half-writes an output: one line naming the path, the previous
output untouched, no temporary file left, no crash. Runs on a small tmpfs (needs root to mount)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401
from pipeline.backbones import load_backbone
from pipeline.datasets.synthetic import generate_synthetic, load_synthetic
from pipeline.errors import PipelineError
from pipeline.evaluate import write_metrics
from pipeline.extract import extract
from pipeline.store import FeatureStore
from pipeline.train import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` until about ``leave`` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_model_and_metrics_on_a_full_disk_fail_in_one_line_and_keep_the_previous_ones(small_disk):
    model, metrics = small_disk / "model.pt", small_disk / "metrics.json"
    model.write_bytes(b"previous model")
    metrics.write_text('{"previous": true}')
    fill(small_disk)
    with pytest.raises(PipelineError, match=r"model.pt: cannot write the model \(No space left on device\)") as err:
        save_checkpoint({"model": "eszsl", "state": {"V": np.ones((300, 300))}}, model)
    assert "\n" not in str(err.value)
    with pytest.raises(PipelineError, match=r"metrics.json: cannot write the metrics \(No space left on device\)"):
        write_metrics({"czsl": {"acc": 0.5}, "pad": "x" * 10000}, metrics)
    assert model.read_bytes() == b"previous model" and json.loads(metrics.read_text()) == {"previous": True}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "metrics.json", "model.pt"]


def test_semantics_on_a_full_disk_is_one_line_not_a_crash(small_disk, tmp_path):
    generate_synthetic(tmp_path / "data", images_per_class=2, image_size=32, seed=0)
    features = tmp_path / "features.h5"
    extract(load_synthetic(tmp_path / "data"), load_backbone("resnet18", "none", 32), features, workers=0)
    output = small_disk / "semantics.h5"
    output.write_bytes(b"previous semantics")
    fill(small_disk, leave=4096)
    run = subprocess.run([sys.executable, str(REPO / "cli.py"), "semantics", "--features", str(features), "--output",
                          str(output), "--attributes", "synthetic", "--data-root", str(tmp_path / "data"),
                          "--text", "glove"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])  # not a segfault (-11)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr and "semantics.h5: cannot write the semantics (No space left" in last
    assert output.read_bytes() == b"previous semantics" and not (small_disk / "semantics.h5.partial").exists()


def test_extraction_that_fills_the_disk_keeps_its_rows_and_finishes_once_there_is_room(small_disk, tmp_path):
    generate_synthetic(tmp_path / "data", images_per_class=6, image_size=32, seed=0)
    data, net = load_synthetic(tmp_path / "data"), load_backbone("resnet18", "none", 32)
    reference = extract(data, net, tmp_path / "reference.h5", workers=0).path
    output, partial = small_disk / "f.h5", small_disk / "f.h5.partial"
    fill(small_disk, leave=200_000)  # the store (~600 KB allocated, sparse) outgrows what is left
    with pytest.raises(PipelineError, match=r"f.h5.partial: cannot write \(No space left on device\); the rows "
                                            "finished so far are kept"):
        extract(data, net, output, workers=0, batch_size=16)
    with FeatureStore(partial) as store:
        kept = int(store.ok.sum())
    assert 0 < kept < len(data)
    assert not output.exists()
    (small_disk / "filler").unlink()
    assert extract(data, net, output, workers=0, batch_size=16).reused == kept
    assert not partial.exists()
    with FeatureStore(output) as got, FeatureStore(reference) as want:
        assert got.complete and got.ok.all() and got.failures == {}
        np.testing.assert_array_equal(got.features(), want.features())
