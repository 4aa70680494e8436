"""Extraction end to end: resume after a real kill, unreadable images, reuse of finished files."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline  # noqa: F401
from pipeline.backbones import load_backbone
from pipeline.datasets.base import ImageDataset
from pipeline.datasets.synthetic import generate_synthetic, load_synthetic
from pipeline.datasets.webdataset import load_webdataset, write_webdataset
from pipeline.distributed import shard_rows
from pipeline.errors import PipelineError
from pipeline.extract import ImageFiles, batch_size_for, extract, image_batches
from pipeline.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, images_per_class=6, image_size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchvision

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _cli_extract(root: Path, ckpt: Path, output: Path, *extra: str, dataset: str = "synthetic") -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), "extract", "--dataset", dataset, "--root", str(root),
            "--backbone", "resnet18", "--pretrained", str(ckpt), "--image-size", "64", "--grid",
            "--batch-size", "8", "--workers", "1", "--output", str(output), *extra]


def _kill_part_way(command: list[str], partial: Path, rows: int) -> int:
    """Run ``command`` in a session of its own and kill -9 all of it once ``partial`` holds ``rows``
    finished rows (or after 120 s); returns the rows it held when last read."""
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline, done = time.time() + 120, 0
        while time.time() < deadline and proc.poll() is None:
            if partial.exists():
                with FeatureStore(partial) as store:
                    done = int(store.ok.sum())
                if done >= rows:
                    break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return done


def test_resume_after_kill_has_no_lost_or_duplicate_rows(synthetic_root, resnet18_checkpoint, tmp_path):
    reference = tmp_path / "reference.h5"
    subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, reference), check=True, capture_output=True)

    output = tmp_path / "killed.h5"
    partial = tmp_path / "killed.h5.partial"
    done = _kill_part_way(_cli_extract(synthetic_root, resnet18_checkpoint, output), partial, 40)
    assert 0 < done < 288, "the run should be killed part way"
    assert not output.exists() and partial.exists()
    with FeatureStore(partial) as store:
        assert not store.complete
        killed_ok = store.ok
    assert 0 < killed_ok.sum() < len(killed_ok)

    resumed = subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, output), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{int(killed_ok.sum())} already done" in resumed.stdout
    assert not partial.exists()
    with FeatureStore(output) as got, FeatureStore(reference) as want:
        assert got.complete and got.ok.all()
        np.testing.assert_allclose(got.features(), want.features(), atol=1e-3)
        np.testing.assert_allclose(got.dataset("grid")[:], want.dataset("grid")[:], atol=1e-3)
        assert got.image_ids == want.image_ids


def test_ctrl_c_keeps_finished_rows_and_resumes(synthetic_root, resnet18_checkpoint, tmp_path):
    output = tmp_path / "interrupted.h5"
    partial = tmp_path / "interrupted.h5.partial"
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    proc = subprocess.Popen(_cli_extract(synthetic_root, resnet18_checkpoint, output), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists():
            with FeatureStore(partial) as store:
                if store.ok.sum() >= 16:
                    break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in stderr and "interrupted" in stderr
    with FeatureStore(partial) as store:
        assert store.ok.sum() >= 16
    resumed = subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, output), capture_output=True, text=True)
    assert resumed.returncode == 0 and "already done" in resumed.stdout


def _tiny_dataset(root: Path) -> ImageDataset:
    rng = np.random.default_rng(0)
    ids = []
    for i in range(6):
        ids.append(f"c{i % 2}/img{i}.jpg")
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / ids[-1], quality=90)
    data = (root / ids[1]).read_bytes()
    (root / ids[1]).write_bytes(data[: len(data) // 3])  # truncated JPEG
    (root / ids[3]).write_bytes(b"this is not an image")  # corrupt
    (root / ids[4]).unlink()  # missing
    return ImageDataset("tiny", root, ids, np.array([0, 1, 0, 1, 0, 1]), ["c0", "c1"],
                        {"trainval": np.array([0, 1, 2]), "test_seen": np.array([3, 4, 5])})


def test_unreadable_images_are_recorded_and_excluded(tmp_path):
    data = _tiny_dataset(tmp_path / "img")
    net = load_backbone("resnet18", "none", 32)
    with pytest.raises(PipelineError, match=r"3 of 6 images could not be read, more than max_failures allows \(2\): "
                                            r"c1/img1.jpg .*the 3 others are saved in .*f.h5.partial"):
        extract(data, net, tmp_path / "f.h5", workers=0, batch_size=4, max_failures=2)
    assert not (tmp_path / "f.h5").exists()
    result = extract(data, net, tmp_path / "f.h5", workers=0, batch_size=4, max_failures=0.5)
    assert result.reused == 3 and result.written == 0  # the rerun only retried the failed images
    assert sorted(result.failures) == [1, 3, 4]
    assert extract(data, net, tmp_path / "g.h5", workers=0, batch_size=4, max_failures=3).written == 3
    assert "FileNotFoundError" in result.failures[4]
    summary = result.summary()
    assert "3 failed" in summary and "c1/img1.jpg" in summary
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.complete
        assert store.ok.tolist() == [True, False, True, False, False, True]
        assert set(store.failures) == {1, 3, 4}
        assert np.isnan(store.dataset("features")[1]).all()
        assert np.isfinite(store.features()).all() and store.features().shape == (3, 512)
        assert store.splits["trainval"].tolist() == [0, 2]
        assert store.splits["test_seen"].tolist() == [5]


def test_decoding_threads_give_the_same_batches_in_order_and_stop_when_closed(tmp_path):
    data = _tiny_dataset(tmp_path / "img")
    preprocess = load_backbone("resnet18", "none", 32).preprocess
    files = ImageFiles(data, np.array([5, 4, 3, 2, 1, 0]), preprocess)
    cpu = torch.device("cpu")
    inline = list(image_batches(files, 4, 0, cpu))
    threaded = list(image_batches(files, 4, 2, cpu))
    assert [len(b[0]) for b in inline] == [4, 2]
    for (rows, images, errors), (rows2, images2, errors2) in zip(inline, threaded, strict=True):
        assert rows.tolist() == rows2.tolist() and errors == errors2
        assert images.dtype == torch.uint8 and torch.equal(images, images2)
    assert torch.cat([b[0] for b in threaded]).tolist() == [5, 4, 3, 2, 1, 0]
    assert [bool(e) for b in threaded for e in b[2]] == [False, True, True, False, True, False]

    many = ImageFiles(data, np.tile(np.arange(6), 50), preprocess)
    batches = image_batches(many, 2, 2, cpu)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_cli_exit_status_reports_failed_images(tmp_path):
    _tiny_dataset(tmp_path / "img")
    cmd = [sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "folder", "--root", str(tmp_path / "img"),
           "--backbone", "resnet18", "--pretrained", "none", "--image-size", "32", "--workers", "0",
           "--output", str(tmp_path / "f.h5")]
    refused = subprocess.run(cmd, capture_output=True, text=True)  # 2 of 5 images > the default 1 %
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "2 of 5 images could not be read, more than max_failures allows (0)" in refused.stderr
    run = subprocess.run([*cmd, "--max-failures", "2"], capture_output=True, text=True)
    assert run.returncode == 3
    assert "2 failed" in run.stdout  # folder adapter lists only files present: truncated + corrupt
    assert "RANDOM weights" in run.stderr


def test_finished_file_is_reused_and_other_settings_refused(synthetic_root, tmp_path):
    data = load_synthetic(synthetic_root)
    net = load_backbone("resnet18", "none", 32)
    out = tmp_path / "f.h5"
    first = extract(data, net, out, workers=0)
    assert first.written == len(data)
    mtime = out.stat().st_mtime_ns
    again = extract(data, net, out, workers=0)
    assert (again.written, again.reused) == (0, len(data))
    assert out.stat().st_mtime_ns == mtime
    with pytest.raises(PipelineError, match="--overwrite"):
        extract(data, net, out, workers=0, dtype="float32")
    replaced = extract(data, net, out, workers=0, dtype="float32", overwrite=True)
    assert replaced.written == len(data)
    with FeatureStore(out) as store:
        assert store.dataset("features").dtype == np.float32


def test_output_that_is_another_kind_of_file_is_refused_untouched(synthetic_root, tmp_path):
    """A model file given as --output (swapped arguments) is named and kept, not read as a store to resume."""
    data = load_synthetic(synthetic_root)
    net = load_backbone("resnet18", "none", 32)
    out = tmp_path / "model.pt"
    torch.save({"model": "eszsl"}, out)
    kept = out.read_bytes()
    with pytest.raises(PipelineError, match=r"model.pt exists and is not an HDF5 file \(a zip archive: a model file "
                                            r"from zsl train\?\); choose another --output, or pass --overwrite"):
        extract(data, net, out, workers=0)
    assert out.read_bytes() == kept


def test_mid_grid_stores_an_earlier_stage_on_the_same_regions(synthetic_root, tmp_path):
    data = load_synthetic(synthetic_root)
    net = load_backbone("resnet18", "none", 64)
    out = tmp_path / "f.h5"
    with pytest.raises(PipelineError, match="pass --grid as well"):
        extract(data, net, out, workers=0, mid_grid=True)
    extract(data, net, out, workers=0, grid=True)
    with pytest.raises(PipelineError, match="--overwrite"):  # another setting: not reused
        extract(data, net, out, workers=0, grid=True, mid_grid=True)
    extract(data, net, out, workers=0, grid=True, mid_grid=True, overwrite=True)
    with FeatureStore(out) as store:
        assert store.has_mid_grid and store.dataset("grid_mid").shape == (len(data), 4, 256)
        assert store.provenance["mid_grid_shape"] == [4, 256]
        image = ImageFiles(data, np.array([0]), net.preprocess)[0][1][None].float() / 255
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (net.preprocess.mean, net.preprocess.std))
        with torch.no_grad():
            _, grid, mid = net((image - mean) / std)
        np.testing.assert_allclose(store.dataset("grid_mid")[0], mid[0].numpy(), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(store.dataset("grid")[0], grid[0].numpy(), atol=2e-2, rtol=1e-2)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    data = _tiny_dataset(tmp_path / "img")
    net = load_backbone("resnet18", "none", 32)
    output = tmp_path / "f.h5"
    holder = subprocess.Popen(  # a first run: holds the output's lock, as extract does for its whole run
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.extract import output_lock\n"
         f"with output_lock(Path({str(output)!r})):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError, match=f"f.h5: another extraction \\(pid {holder.pid}\\) is writing it") as err:
            extract(data, net, output, workers=0, batch_size=4)
        assert "\n" not in str(err.value) and not output.exists()
    finally:
        holder.kill()  # as kill -9 would: the OS releases the lock
        holder.wait()
    assert extract(data, net, output, workers=0, batch_size=4, max_failures=3).written == 3


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "LA", "P", "RGBA", "CMYK", "1"])
def test_every_pil_mode_reads_like_its_8_bit_twin(tmp_path, mode):
    from pipeline.extract import rgb

    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (24, 32)).astype(np.uint8)
    if mode in ("I;16", "I"):  # 16-bit greyscale: v16 = 257 * v8 is the same picture
        img = Image.fromarray(grey8.astype(np.uint16) * 257)  # mode I;16
        img.save(tmp_path / "x.png")  # through a real 16-bit PNG file
        img = Image.open(tmp_path / "x.png")
        img = img.convert("I") if mode == "I" else img  # what older Pillow opens 16-bit PNGs as
        twin = Image.fromarray(grey8, "L")
    elif mode == "F":
        img, twin = Image.fromarray(grey8.astype(np.float32), "F"), Image.fromarray(grey8, "L")
    else:
        twin = Image.fromarray(np.stack([grey8, 255 - grey8, grey8 // 2], axis=-1), "RGB")
        img = twin.convert(mode)
        twin = img.convert("RGB")  # PIL's own conversion is right for these modes
    got, want = np.asarray(rgb(img), dtype=int), np.asarray(twin.convert("RGB"), dtype=int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1
    assert mode not in ("I;16", "I") or got.mean() < 200  # not the all-white image of convert("RGB")


def test_image_lists_may_not_leave_the_dataset_root(tmp_path):
    for bad in ("../outside/secret.png", "/etc/passwd", "a/../../b.jpg"):
        with pytest.raises(PipelineError, match="leaves the dataset root"):
            ImageDataset("tags", tmp_path, ["ok/x.jpg", bad], np.zeros(2, np.int64), ["c"])
    ImageDataset("tags", tmp_path, ["ok/x.jpg", "b..c/y.jpg"], np.zeros(2, np.int64), ["c"])  # '..' in a name is fine



_FINISH = """
import json, sys
from pathlib import Path
import numpy as np
import pipeline
from pipeline.backbones import load_backbone
from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.extract import extract
d = json.loads(sys.argv[1])
data = ImageDataset("tiny", Path(d["root"]), d["ids"], np.array(d["labels"]), d["classes"],
                    {k: np.array(v) for k, v in d["splits"].items()})
try:
    extract(data, load_backbone("resnet18", d["ckpt"], 32), Path(d["output"]), workers=0, max_failures=3)
except PipelineError as e:
    sys.exit(f"error: {e}")
"""


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _strace_works(), reason="needs strace (ptrace) to kill the process at exact system calls")
def test_a_kill_or_a_full_disk_at_any_write_while_finishing_loses_nothing_and_the_rerun_finishes(tmp_path, resnet18_checkpoint):
    data = _tiny_dataset(tmp_path / "img")
    net = load_backbone("resnet18", str(resnet18_checkpoint), 32)
    output, partial, pristine = tmp_path / "f.h5", tmp_path / "f.h5.partial", tmp_path / "pristine.h5"
    with pytest.raises(PipelineError, match="more than max_failures"):  # every row done, finishing refused
        extract(data, net, output, workers=0, max_failures=1)
    shutil.copyfile(partial, pristine)
    with FeatureStore(pristine) as store:
        ok, features, complete = store.ok, store.dataset("features")[:], store.complete
    assert not complete and ok.tolist() == [True, False, True, False, False, True]

    def finish(run: str, *strace: str) -> subprocess.CompletedProcess:
        """The same extraction in a new process, on a copy of the partial store in ``tmp_path/run`` (it only
        has to retry the failed rows and finish)."""
        (tmp_path / run).mkdir()
        shutil.copyfile(pristine, tmp_path / run / "f.h5.partial")
        spec = json.dumps({"root": str(data.root), "ids": data.image_ids, "labels": data.labels.tolist(),
                           "classes": data.classes, "splits": {k: v.tolist() for k, v in data.splits.items()},
                           "ckpt": str(resnet18_checkpoint), "output": str(tmp_path / run / "f.h5")})
        return subprocess.run([*strace, sys.executable, "-c", _FINISH, spec], capture_output=True, text=True)

    calls = ("pwrite64", "ftruncate", "rename")
    trace = tmp_path / "trace"
    assert finish("clean", "strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={','.join(calls)}").returncode == 0
    lines = [line.split(None, 1)[1] for line in trace.read_text().splitlines()]
    counts = {call: sum(line.startswith(f"{call}(") for line in lines) for call in calls}
    assert counts["pwrite64"] >= 4 and counts["rename"] == 1, counts  # NaN rows, reasons, complete byte; output
    faults = [(call, k, "signal=KILL") for call, count in counts.items() for k in range(1, count + 1)]
    faults += [("pwrite64", k, "error=ENOSPC") for k in range(1, counts["pwrite64"] + 1)]  # the disk fills there
    with ThreadPoolExecutor(3) as pool:  # each fault in its own process and folder
        runs = list(pool.map(lambda f: finish(f"{f[0]}-{f[1]}-{f[2][:5]}", "strace", "-f", "-qq", "-o", os.devnull,
                                              "-e", f"trace={f[0]}", "-e", f"inject={f[0]}:{f[2]}:when={f[1]}"), faults))
    for (call, k, fault), failed in zip(faults, runs, strict=True):
        assert failed.returncode != 0, (call, k, fault)
        if fault == "error=ENOSPC":  # one line, not a traceback or a crash
            assert failed.returncode == 1 and "Traceback" not in failed.stderr, (k, failed.stderr[-2000:])
            assert "No space left on device" in failed.stderr.strip().splitlines()[-1], (k, failed.stderr)
        output = tmp_path / f"{call}-{k}-{fault[:5]}" / "f.h5"
        rerun = extract(data, net, output, workers=0, max_failures=3)  # the user's rerun, as it is
        assert sorted(rerun.failures) == [1, 3, 4] and not output.with_name("f.h5.partial").exists(), (call, k)
        with FeatureStore(output) as got:
            assert got.complete and np.array_equal(got.ok, ok), (call, k)
            np.testing.assert_array_equal(got.dataset("features")[ok], features[ok])
            assert np.isnan(got.dataset("features")[~ok]).all()
            assert sorted(got.failures) == [1, 3, 4] and "FileNotFoundError" in got.failures[4]
            assert got.splits["trainval"].tolist() == [0, 2] and got.splits["test_seen"].tolist() == [5]


_CREATE = """
import sys
import numpy as np
from pathlib import Path
from pipeline.datasets.base import ImageDataset
from pipeline.errors import PipelineError
from pipeline.head import Head
from pipeline.store import create_store
data = ImageDataset("tiny", Path("."), [f"img/{i:03d}.jpg" for i in range(40)], np.arange(40) % 4,
                    ["cat", "dog", "fox", "owl"], {"trainval": np.arange(24), "test_unseen": np.arange(24, 40)})
head = Head(np.ones((4, 8), np.float32), np.arange(4, dtype=np.float32), ["cat", "dog", "fox", "owl"])
try:
    create_store(Path(sys.argv[1]), data, 8, "float16", (4, 8), {"backbone": "x"}, head=head)
except PipelineError as e:
    sys.exit(f"error: {e}")
"""


@pytest.mark.skipif(not _strace_works(), reason="needs strace (ptrace) to fail exact system calls")
def test_a_full_disk_at_any_write_while_creating_a_store_fails_in_one_line_and_leaves_nothing(tmp_path):
    """Every write of a new store reaches the disk when made (HDF5 would buffer small ones until the data
    set closes, where a failure is only printed and the cleanup at exit segfaults): whichever write
    fails, the run ends with one line and exit status 1, and no file claims to be the store."""
    def create(run: str, *strace: str) -> tuple[subprocess.CompletedProcess, Path]:
        (tmp_path / run).mkdir()
        output = tmp_path / run / "f.h5"
        return subprocess.run([*strace, sys.executable, "-c", _CREATE, str(output)], capture_output=True,
                              text=True, cwd=REPO), output

    trace = tmp_path / "trace"
    clean, reference = create("clean", "strace", "-f", "-qq", "-o", str(trace), "-e", "trace=pwrite64")
    assert clean.returncode == 0, clean.stderr
    writes = sum(line.split(None, 1)[1].startswith("pwrite64(") for line in trace.read_text().splitlines())
    assert writes >= 5
    with ThreadPoolExecutor(2) as pool:  # each fault in its own process and folder
        runs = list(pool.map(lambda k: create(f"enospc-{k}", "strace", "-f", "-qq", "-o", os.devnull, "-e",
                                              "trace=pwrite64", "-e", f"inject=pwrite64:error=ENOSPC:when={k}"),
                             range(1, writes + 1)))
    for k, (failed, output) in enumerate(runs, start=1):
        assert failed.returncode == 1, (k, failed.returncode, failed.stderr[-1500:])  # not a crash (-11)
        assert failed.stderr.strip().splitlines() == [f"error: {output}: cannot create the feature store (No space "
                                                      "left on device); choose a writable output folder with room "
                                                      "for it"], (k, failed.stderr[-1500:])
        assert sorted(p.name for p in output.parent.iterdir()) == [], k


# --- torchrun: one shard per rank, joined ------------------------------------------------------------------


@pytest.mark.parametrize("n, world, batch", [(288, 2, 8), (288, 3, 8), (10, 4, 8), (0, 2, 8), (1000, 8, 64)])
def test_shards_are_consecutive_whole_batches_covering_every_row(n, world, batch):
    blocks = shard_rows(n, world, batch)
    assert len(blocks) == world and blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
    assert all(start % batch == 0 for start, stop in blocks if stop > start)  # the batches of one process


def _torchrun(ranks: int, command: list[str]) -> list[str]:
    """``command`` (a ``_cli_extract`` list) under ``torchrun --standalone --nproc-per-node ranks``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
            *command[1:]]


def _same_store(got: Path, want: Path) -> None:
    with FeatureStore(got) as a, FeatureStore(want) as b:
        assert a.complete and a.ok.all() and a.image_ids == b.image_ids
        for name in ("features", "grid", "grid_mid"):
            assert a.dataset(name).dtype == b.dataset(name).dtype
            np.testing.assert_array_equal(a.dataset(name)[:], b.dataset(name)[:])
        assert a.splits.keys() == b.splits.keys() and all(np.array_equal(a.splits[k], b.splits[k]) for k in a.splits)
        assert a.provenance == b.provenance and a.failures == b.failures


def test_two_ranks_write_the_store_one_process_writes(synthetic_root, resnet18_checkpoint, tmp_path):
    reference = tmp_path / "single.h5"
    subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, reference), check=True, capture_output=True)

    joined = tmp_path / "joined.h5"  # default: virtual data sets over the shards
    run = subprocess.run(_torchrun(2, _cli_extract(synthetic_root, resnet18_checkpoint, joined)), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert f"{joined}: 288 images extracted, 0 already done, 0 failed" in run.stdout
    assert sorted(p.name for p in (tmp_path / "joined.h5.shards").glob("*.h5")) == ["joined-0-of-2.h5",
                                                                                    "joined-1-of-2.h5"]
    _same_store(joined, reference)
    with FeatureStore(joined) as store:
        assert store.dataset("grid").is_virtual
    again = subprocess.run(_torchrun(3, _cli_extract(synthetic_root, resnet18_checkpoint, joined)), capture_output=True,
                           text=True)  # another number of processes over the finished store: reused, no advice
    assert again.returncode == 0 and f"{joined}: 0 images extracted, 288 already done" in again.stdout, again.stderr
    assert "delete them" not in again.stderr
    moved = tmp_path / "moved"  # the shards are found next to the joined file, wherever it is read from
    moved.mkdir()
    shutil.move(joined, moved / joined.name)
    shutil.move(tmp_path / "joined.h5.shards", moved / "joined.h5.shards")
    _same_store(moved / joined.name, reference)
    shutil.rmtree(moved / "joined.h5.shards")  # without them the features would read NaN: refused instead
    with pytest.raises(PipelineError, match="joined.h5: its features are read from shard files, and .* is missing"):
        FeatureStore(moved / joined.name)

    merged = tmp_path / "merged.h5"
    run = subprocess.run(_torchrun(2, _cli_extract(synthetic_root, resnet18_checkpoint, merged, "--merge")),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert merged.read_bytes() == reference.read_bytes()  # self-contained, and byte for byte the same file

    again = subprocess.run(_torchrun(2, _cli_extract(synthetic_root, resnet18_checkpoint, merged, "--merge")),
                           capture_output=True, text=True)
    assert again.returncode == 0 and f"{merged}: 0 images extracted, 288 already done" in again.stdout


def test_a_killed_torchrun_resumes_with_no_lost_or_duplicate_rows(synthetic_root, resnet18_checkpoint, tmp_path):
    reference = tmp_path / "single.h5"
    subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, reference), check=True, capture_output=True)
    output = tmp_path / "killed.h5"
    shard = tmp_path / "killed.h5.shards" / "killed-0-of-2.h5.partial"  # the launcher and both ranks killed
    done = _kill_part_way(_torchrun(2, _cli_extract(synthetic_root, resnet18_checkpoint, output)), shard, 16)
    assert 0 < done < 144, "the run should be killed part way"
    assert not output.exists()

    resumed = subprocess.run(_torchrun(2, _cli_extract(synthetic_root, resnet18_checkpoint, output)),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    reused = int(resumed.stdout.split(f"{output}: ")[1].split(" already done")[0].split(", ")[1])
    assert reused >= done
    _same_store(output, reference)

    output.unlink()  # three ranks cut the list elsewhere: the two-rank shards are not reused, and it says so
    three = subprocess.run(_torchrun(3, _cli_extract(synthetic_root, resnet18_checkpoint, output)),
                           capture_output=True, text=True)
    assert three.returncode == 0, three.stderr
    assert "shards of another number of processes (killed-0-of-2.h5, killed-1-of-2.h5)" in three.stderr
    _same_store(output, reference)


# --- WebDataset tar shards ---------------------------------------------------------------------------------


def test_a_webdataset_copy_gives_the_features_of_the_folder_copy_in_one_process_and_under_torchrun(
        synthetic_root, resnet18_checkpoint, tmp_path):
    source = load_synthetic(synthetic_root)
    wds = tmp_path / "wds"
    assert len(write_webdataset(source, wds, per_shard=72)) == 4  # 9 batches of 8 each
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("\n".join(source.classes[:3]))
    reference = tmp_path / "folder.h5"
    subprocess.run(_cli_extract(synthetic_root, resnet18_checkpoint, reference), check=True, capture_output=True)

    single = tmp_path / "single.h5"
    run = subprocess.run(_cli_extract(wds, resnet18_checkpoint, single, "--splits", str(unseen), dataset="webdataset"),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with FeatureStore(single) as got, FeatureStore(reference) as want:
        assert got.image_ids[:2] == ["000000.tar/000000000.png", "000000.tar/000000001.png"]
        np.testing.assert_array_equal(got.labels, want.labels)
        for name in ("features", "grid"):
            np.testing.assert_array_equal(got.dataset(name)[:], want.dataset(name)[:])
        assert set(got.splits) == {"trainval", "test_seen", "test_unseen"}
        assert set(got.labels[got.splits["test_unseen"]]) == {0, 1, 2}

    joined = tmp_path / "joined.h5"  # each rank lists and reads its two tar shards only
    run = subprocess.run(_torchrun(2, _cli_extract(wds, resnet18_checkpoint, joined, "--splits", str(unseen),
                                                   dataset="webdataset")), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with FeatureStore(tmp_path / "joined.h5.shards" / "joined-1-of-2.h5") as shard:
        assert {i.split("/")[0] for i in shard.image_ids} == {"000002.tar", "000003.tar"}
    _same_store(joined, single)


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_labels_may_come_as_json_objects_as_imagenet_copies_write_them(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="JPEG")
    _write_tar(tmp_path / "000000.tar", {"a.jpg": image.getvalue(), "a.json": b'{"label": 1, "class_name": "dog"}',
                                         "b.jpg": image.getvalue(), "b.cls": b"0"})
    dataset = load_webdataset(tmp_path)
    assert dataset.image_ids == ["000000.tar/a.jpg", "000000.tar/b.jpg"]
    assert dataset.labels.tolist() == [1, 0]
    _write_tar(tmp_path / "000001.tar", {"c.jpg": image.getvalue(), "c.json": b'{"caption": "a dog"}'})
    with pytest.raises(PipelineError, match='000001.tar: c.json holds .*not an integer "label" in 0..1'):
        load_webdataset(tmp_path)


def test_webdataset_shards_that_cannot_be_read_name_the_shard_and_the_fix(tmp_path):
    source = ImageDataset("tiny", tmp_path, ["a/x.png"], np.zeros(1, np.int64), ["a"])
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(source.path(0))
    wds = tmp_path / "wds"
    write_webdataset(source, wds, per_shard=10)
    assert load_webdataset(wds).image_ids == ["000000.tar/000000000.png"]
    (wds / "classes.txt").unlink()
    with pytest.raises(PipelineError, match="classes.txt: class names not found"):
        load_webdataset(wds)
    (wds / "classes.txt").write_text("a\n")
    with tarfile.open(wds / "000001.tar", "w") as tar:  # an image without its .cls
        tar.add(source.path(0), arcname="lonely.png")
    with pytest.raises(PipelineError, match="000001.tar: sample 'lonely' has no .cls or .json member"):
        load_webdataset(wds)
    (wds / "000001.tar").write_bytes(gzip.compress((wds / "000000.tar").read_bytes()))
    with pytest.raises(PipelineError, match="000001.tar: not a readable uncompressed tar"):
        load_webdataset(wds)


def test_default_batch_holds_32_images_of_224_px_on_the_cpu_and_64_on_a_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [batch_size_for(None, cpu, px) for px in (224, 448, 384, 112, 2000)] == [32, 8, 11, 128, 1]
    assert batch_size_for(None, gpu, 448) == 64
    assert batch_size_for(5, cpu, 448) == 5 and batch_size_for(5, gpu, 224) == 5  # given: as given
