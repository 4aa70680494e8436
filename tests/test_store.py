"""Feature store: schema, provenance, streaming reads, errors on files that are not stores."""
from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.head import Head
from pipeline.store import FeatureStore, FeatureWriter, create_store


def _dataset(n: int) -> ImageDataset:
    return ImageDataset("toy", Path("/nowhere"), [f"c{i % 3}/{i}.jpg" for i in range(n)], np.arange(n) % 3,
                        ["a", "b", "c"], {"trainval": np.arange(0, n, 2), "test_unseen": np.arange(1, n, 2)})


def _store(path: Path, n: int = 10, grid: tuple[int, int] | None = (4, 3), dtype: str = "float16") -> None:
    create_store(path, _dataset(n), 5, dtype, grid, {"backbone": "resnet18", "mean": [0.5, 0.5, 0.5],
                                                     "versions": {"torch": "2.13.0"}})


def test_same_rows_give_the_same_file_bytes(tmp_path: Path):
    # DVC hashes the file: re-extracting identical features must not look like a change.
    for name in ("a.h5", "b.h5"):
        _store(tmp_path / name)
        with FeatureWriter(tmp_path / name) as w:
            w.write(np.arange(10), np.ones((10, 5)), np.ones((10, 4, 3)))
            w.finalize({})
        time.sleep(1.1)  # HDF5 object times have one-second resolution
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_failed_creation_leaves_no_half_made_store(tmp_path: Path):
    # A reader (or a resumed run) must never find a store that is still being created.
    path = tmp_path / "s.h5.partial"
    _store(path, n=4)
    with FeatureWriter(path) as w:
        w.write(np.arange(2), np.ones((2, 5)), np.ones((2, 4, 3)))
    with pytest.raises(TypeError):
        create_store(path, _dataset(4), 5, "float16", None, {"backbone": object()})
    with FeatureStore(path) as store:
        assert store.ok.tolist() == [True, True, False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5.partial"]


def test_schema_and_provenance(tmp_path: Path):
    path = tmp_path / "s.h5"
    _store(path)
    with FeatureWriter(path) as w:
        assert w.pending().tolist() == list(range(10))
        w.write(np.arange(10), np.arange(50).reshape(10, 5), np.ones((10, 4, 3)))
        w.finalize({})
    with h5py.File(path) as f:
        assert f["features"].shape == (10, 5) and f["features"].dtype == np.float16
        assert f["grid"].shape == (10, 4, 3)
        assert f["labels"].dtype == np.int64
        assert f["image_ids"][3].decode() == "c0/3.jpg"
        assert f["splits/trainval"][:].tolist() == [0, 2, 4, 6, 8]
        assert f["complete"][0] == 1 and f.attrs["schema_version"] == 2
    with FeatureStore(path) as s:
        p = s.provenance
        assert p["backbone"] == "resnet18" and p["mean"] == [0.5, 0.5, 0.5] and p["versions"] == {"torch": "2.13.0"}
        assert p["feature_dim"] == 5 and p["grid_shape"] == [4, 3] and p["dtype"] == "float16"
        assert s.classes == ["a", "b", "c"] and s.labels.tolist() == (np.arange(10) % 3).tolist()
        np.testing.assert_array_equal(s.features(s.splits["test_unseen"])[:, 0], [5, 15, 25, 35, 45])


def test_classifier_head_is_stored_with_what_each_output_means(tmp_path: Path):
    rng = np.random.default_rng(0)
    head = Head(rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=4).astype(np.float32),
                ["n1", "b", "n3", "a"])
    create_store(tmp_path / "h.h5", _dataset(6), 5, "float32", None, {}, head=head)
    with FeatureStore(tmp_path / "h.h5") as store:
        got = store.head
    assert got is not None and got.classes == head.classes
    np.testing.assert_array_equal(got.weight, head.weight)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(got.logits(x), x @ head.weight.T + head.bias, rtol=1e-6)
    assert got.rows_of(["a", "b", "c"]).tolist() == [3, 1, -1]  # the store's classes a, b, c
    with pytest.raises(PipelineError, match="does not fit 6-d features"):
        create_store(tmp_path / "bad.h5", _dataset(6), 6, "float32", None, {}, head=head)
    _store(tmp_path / "none.h5")
    with FeatureStore(tmp_path / "none.h5") as store:
        assert store.head is None


def test_rows_written_out_of_order_and_pending(tmp_path: Path):
    path = tmp_path / "s.h5"
    _store(path, grid=None, dtype="float32")
    with FeatureWriter(path) as w:
        w.write(np.array([7, 2]), np.full((2, 5), 1.5))
        assert w.pending().tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
        with pytest.raises(PipelineError, match="non-finite"):
            w.write(np.array([0]), np.full((1, 5), np.nan))
        assert 0 in w.pending()
    with FeatureStore(path) as s:
        assert not s.complete and s.ok.sum() == 2
        assert s.features().tolist() == [[1.5] * 5] * 2


def test_grid_streams_in_bounded_memory(tmp_path: Path):
    path = tmp_path / "big.h5"
    n, regions, dim = 3000, 49, 512  # 150 MB of float16 on disk, 300 MB as float32
    create_store(path, _dataset(n), 8, "float16", (regions, dim), {})
    with FeatureWriter(path) as w:
        rng = np.random.default_rng(0)
        for lo in range(0, n, 500):
            rows = np.arange(lo, lo + 500)
            w.write(rows, np.zeros((500, 8)), rng.standard_normal((500, regions, dim)).astype(np.float16))
    with FeatureStore(path) as s:
        tracemalloc.start()
        seen, total = 0, 0.0
        for rows, block in s.iter_rows("grid", s.splits["trainval"], batch_rows=64):
            assert block.shape[1:] == (regions, dim) and block.dtype == np.float32
            seen += len(rows)
            total += float(block[:, 0, 0].sum())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seen == n // 2
        assert peak < 30e6, f"streaming peaked at {peak / 1e6:.0f} MB"
        want = s.dataset("grid")[::2, 0, 0].astype(np.float32).sum()
        assert total == pytest.approx(float(want), rel=1e-4)


def test_files_that_are_not_stores_give_one_line_errors(tmp_path: Path):
    with pytest.raises(PipelineError, match="not found"):
        FeatureStore(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"hello")
    with pytest.raises(PipelineError, match="junk.h5: not an HDF5 file; pass a feature file here, made by: zsl extract"):
        FeatureStore(tmp_path / "junk.h5")
    # a model file given for a store (swapped arguments) is named, and not called one to delete
    torch.save({"model": "eszsl"}, tmp_path / "model.pt")
    with pytest.raises(PipelineError, match=r"model.pt: not an HDF5 file \(a zip archive: a model file from") as e:
        FeatureStore(tmp_path / "model.pt")
    assert "delete" not in str(e.value)
    # an HDF5 file cut short is a broken store: rebuilding it is the fix
    with h5py.File(tmp_path / "cut.h5", "w") as f:
        f["features"] = np.zeros((1000, 64))
    data = (tmp_path / "cut.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="cut.h5: not a readable HDF5 file .*; delete it and run again: zsl extract"):
        FeatureStore(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["features"] = np.zeros((2, 2))
    with pytest.raises(PipelineError, match=r"other.h5: not a feature store .*missing \['labels'"):
        FeatureStore(tmp_path / "other.h5")
    path = tmp_path / "s.h5"
    _store(path, grid=None)
    with FeatureStore(path) as s, pytest.raises(PipelineError, match="--grid"):
        s.dataset("grid")


def test_info_command_prints_schema_counts_and_provenance(tmp_path: Path):
    path = tmp_path / "s.h5"
    _store(path)
    with FeatureWriter(path) as w:
        w.write(np.arange(9), np.zeros((9, 5)), np.zeros((9, 4, 3)))
        w.finalize({9: "OSError: image file is truncated"})
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "complete: True" in out and "grid       (10, 4, 3)" in out
    assert re.search(r"split trainval\s+5 images", out) and re.search(r"split test_unseen\s+4 images", out)
    assert "backbone: resnet18" in out and "1 failed" in out and "c0/9.jpg: OSError" in out
    missing = CliRunner().invoke(cli, ["info", str(tmp_path / "nope.h5")])
    assert missing.exit_code == 1 and "nope.h5: feature file not found" in missing.output


def test_failure_reasons_fill_fixed_slots_and_stores_of_schema_1_still_read(tmp_path: Path):
    path = tmp_path / "s.h5"
    _store(path, n=1200, grid=None)
    failed = {i: f"OSError: broken {i} " + "é" * 300 for i in range(0, 1200, 2)}
    with FeatureWriter(path) as w:
        w.write(np.arange(1, 1200, 2), np.ones((600, 5)))
        w.finalize(failed)
    with FeatureStore(path) as s:
        assert s.complete and len(s.failures) == 600
        assert s.failures[2].startswith("OSError: broken 2 é") and len(s.failures[2].encode()) <= 240
        assert s.splits["trainval"].size == 0 and s.splits["test_unseen"].tolist() == list(range(1, 1200, 2))
    many = tmp_path / "many.h5"
    _store(many, n=1500, grid=None)  # 1000 reason slots
    with FeatureWriter(many) as w:
        w.write(np.array([0]), np.ones((1, 5)))
        w.finalize({i: "OSError" for i in range(1, 1500)})
    with FeatureStore(many) as s:
        assert len(s.failures) == 1499 and s.failures[1000] == "OSError"
        assert s.failures[1001].startswith("reason not recorded")

    with h5py.File(path, "r+") as f:  # as version 1 wrote it: a flag attribute, exact failures, filtered splits
        del f["complete"], f["failures"]
        f.attrs["complete"], f.attrs["schema_version"] = True, 1
        f["failures/index"] = np.arange(0, 1200, 2)
        f.create_dataset("failures/reason", data=[failed[i] for i in range(0, 1200, 2)], dtype=h5py.string_dtype())
        del f["splits/trainval"]
        f["splits/trainval"] = np.zeros(0, np.int64)
    with FeatureStore(path) as s:
        assert s.complete and s.failures[2] == failed[2] and len(s.failures) == 600
        assert s.splits["test_unseen"].tolist() == list(range(1, 1200, 2))
    with pytest.raises(PipelineError, match="schema 1, written by an older version, cannot be resumed"):
        FeatureWriter(path)


@pytest.mark.parametrize("storage", ["external", "virtual"])
def test_a_store_whose_data_would_read_another_file_is_refused(tmp_path: Path, storage):
    """A crafted store could read any local file as its image ids (HDF5 external or virtual storage)."""
    path = tmp_path / "store.h5"
    _store(path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    with h5py.File(path, "r+") as f:
        n = len(f["image_ids"])
        del f["image_ids"]
        if storage == "external":
            f.create_dataset("image_ids", shape=(n,), dtype="S8", external=[(str(secret), 0, 8 * n)])
        else:
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other["ids"] = np.array([b"x"] * n, dtype="S8")
            layout = h5py.VirtualLayout(shape=(n,), dtype="S8")
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "ids", shape=(n,))
            f.create_virtual_dataset("image_ids", layout)
    with pytest.raises(PipelineError, match="its image_ids would read files outside the store"):
        FeatureStore(path)
