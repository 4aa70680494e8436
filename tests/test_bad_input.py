"""A traceback is a bug: every bad input a user can give (parameters, CLI options, damaged files)
ends with one error line naming the culprit and its fix, and leaves finished outputs untouched."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_toy_store
from PIL import Image

from cli import cli
from pipeline.datasets.folder import read_unseen
from pipeline.datasets.tag_table import load_tag_table
from pipeline.errors import PipelineError
from pipeline.evaluate import read_candidate_sets
from pipeline.models import make_model
from pipeline.params import SCHEMA, check_params
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(path: str, value: object) -> dict:
    """PARAMS with ``path`` (``section.key``, or a section) set to ``value`` (``...``: removed)."""
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in PARAMS.items()}
    section, _, key = path.partition(".")
    target = params if not key else params.setdefault(section, {})
    name = key or section
    if value is ...:
        target.pop(name)
    else:
        target[name] = value
    return params


@pytest.mark.parametrize("path, value, culprit", [
    ("train.seed", "zero", "train.seed: 'zero' is not a whole number >= 0"),
    ("train.val_fraction", 1.5, "train.val_fraction: 1.5 is not a number in (0, 1)"),
    ("trian", {"seed": 0}, "trian: unknown section (did you mean train?)"),
    ("train", ..., "train: missing section"),
    ("train.val_folds", ..., "train.val_folds: missing"),
    ("semantics.text", "minilm", "semantics.text: 'minilm' is not a list, e.g. [minilm, glove]"),
    ("extract.image_size", -5, "extract.image_size: -5 is not a whole number >= 16 or null"),
    ("extract.image_size", 0, "extract.image_size: 0 is not a whole number >= 16 or null"),
    ("extract.batch_size", 0, "extract.batch_size: 0 is not a whole number >= 1"),
    ("extract.workers", -1, "extract.workers: -1 is not a whole number >= 0"),
    ("extract.max_failures", -0.1, "extract.max_failures: -0.1 is not a number >= 0"),
    ("extract.bakcbone", "resnet18", "extract.bakcbone: unknown key (did you mean backbone?)"),
    ("extract.backbone", "resnet34", "extract.backbone: 'resnet34' is not one of resnet18"),
])
def test_bad_parameters_are_one_line_naming_each_culprit(path, value, culprit):
    with pytest.raises(PipelineError) as err:
        check_params(_with(path, value), SCHEMA)
    assert culprit in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("params.yaml: ")


@pytest.mark.parametrize("model, section, culprit", [
    ("eszsl", {"gamma": "abc"}, "eszsl: gamma: 'abc' is not a number >= 0"),
    ("drmn", {"lr": "fast", "epochs": "ten"}, "drmn: lr: 'fast' is not a number >= 0 (default 0.0005); epochs: 'ten' is not"),
    ("drmn", {"epochs": 2.5}, "drmn: epochs: 2.5 is not a whole number >= 0"),
    ("sdl", {"diversity_weighting": "no"}, "sdl: diversity_weighting: 'no' is not true or false"),
    ("eszsl", {"gama": 1.0}, "eszsl: unknown hyperparameters ['gama']"),
    ("esszl", {}, "unknown model 'esszl'; choose one of eszsl"),
])
def test_bad_model_sections_are_one_line_naming_each_culprit(model, section, culprit):
    with pytest.raises(PipelineError, match=re.escape(culprit)):
        make_model(model, **section)


@pytest.mark.parametrize("path, value, culprit", [
    ("model", ["eszsl"], "model: expected a model name, got ['eszsl']"),
    ("model", ..., "model: missing"),
    ("joint_gcn", [1, 2], "joint_gcn: expected keys (hyperparameters), got [1, 2]"),
])
def test_a_bad_model_entry_is_one_line(path, value, culprit):
    with pytest.raises(PipelineError) as err:
        check_params(_with(path, value), ["model", "train"])
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_a_null_hyperparameter_is_the_models_default_and_a_value_fixes_it():
    params = _with("model", "eszsl") | {"eszsl": {"gamma": None, "lam": 10, "labels": None}}
    assert check_params(params, ["model", "train"])["eszsl"] == {"lam": 10}  # gamma still searched, labels default


def test_text_inputs_that_are_not_utf8_are_one_line_naming_the_line(tmp_path):
    """A Latin-1 byte (é) in a list, table or JSON a user gives: the file, its line and the fix."""
    (tmp_path / "unseen.txt").write_bytes(b"cat\ncaf\xe9\n")
    with pytest.raises(PipelineError, match=r"unseen.txt:2: not UTF-8 text \(invalid continuation byte\); save "
                                            r"the unseen-class list as UTF-8$"):
        read_unseen(tmp_path / "unseen.txt", ["cat", "dog"])
    (tmp_path / "tags.csv").write_bytes(b"image,tags,split\na.jpg,dog,trainval\nb.jpg,caf\xe9,test\n")
    (tmp_path / "unseen_tags.txt").write_text("dog\n")
    with pytest.raises(PipelineError, match=r"tags.csv:3: not UTF-8 text .*; save the tag table as UTF-8$"):
        load_tag_table(tmp_path / "tags.csv", tmp_path / "unseen_tags.txt")
    (tmp_path / "sets.json").write_bytes(b'{"2-hops":\n ["caf\xe9"]}')
    with pytest.raises(PipelineError, match=r"sets.json:2: not UTF-8 text .*; save the candidate sets as UTF-8$"):
        read_candidate_sets(tmp_path / "sets.json", ["cat"])


def test_params_that_are_not_utf8_stop_a_stage_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes() + b"# caf\xe9\n")
    run = subprocess.run([sys.executable, "-m", "stages.train", "--features", "f.h5", "--semantics", "s.h5",
                          "--output", "m.pt"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    line = (REPO / "params.yaml").read_bytes().count(b"\n") + 1  # the line added
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"error: params.yaml:{line}: not UTF-8 text (invalid continuation byte); save the parameters as UTF-8"]


def test_numbers_yaml_reads_as_text_are_taken_as_numbers():
    params = check_params(_with("train.val_fraction", "2e-1"), SCHEMA)
    assert params["train"]["val_fraction"] == 0.2
    assert make_model("eszsl", gamma="1e-3").hparams["gamma"] == 0.001


def test_a_stage_with_bad_parameters_stops_before_touching_anything(tmp_path):
    bad = _with("train.val_fraction", 1.5) | {"trian": {"seed": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"finished model")
    run = subprocess.run([sys.executable, "-m", "stages.train", "--features", "f.h5", "--semantics", "s.h5",
                          "--output", "models/model.pt"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.val_fraction: 1.5" in lines[0] and "trian: unknown section" in lines[0]
    assert (tmp_path / "models" / "model.pt").read_bytes() == b"finished model"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished feature store (4 train, 2 seen-test, 2 unseen-test images of 4 classes), its
    semantics from an attribute table, a finished model and metrics to keep intact."""
    tmp = tmp_path_factory.mktemp("bad")
    classes = ["a", "b", "c", "d"]
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 3])
    splits = {"trainval": np.arange(4), "test_seen": np.array([4, 5]), "test_unseen": np.array([6, 7])}
    features = write_toy_store(tmp / "features.h5", labels, classes, splits,
                               np.random.default_rng(0).normal(size=(8, 4)))
    table = tmp / "attributes.csv"
    table.write_text("class,red,round,furry\na,1,0,0\nb,0,1,0\nc,0,0,1\nd,1,1,0\n")
    semantics = tmp / "semantics.h5"
    build_semantics(features, semantics, SemanticsConfig(attributes=str(table), text=(), attribute_vectors="glove"))
    model, metrics = tmp / "model.pt", tmp / "metrics.json"
    assert CliRunner().invoke(cli, ["train", "--model", "eszsl", "--features", str(features), "--semantics",
                                    str(semantics), "--no-select", "--val-fraction", "0.5",
                                    "--output", str(model)]).exit_code == 0
    metrics.write_text('{"finished": true}')
    images = tmp / "images"
    for k in range(2):
        (images / f"c{k}").mkdir(parents=True)
        Image.new("RGB", (40, 40), (60 * k, 90, 30)).save(images / f"c{k}" / "0.jpg")
    evil = tmp / "evil.pt"
    torch.save({"state_dict": _RunsCode()}, evil)
    unseen = tmp / "unseen.txt"
    unseen.write_text("c1\nc2\n")  # c2 has no folder
    return {"features": features, "semantics": semantics, "model": model, "metrics": metrics, "tmp": tmp,
            "images": images, "evil": evil, "unseen": unseen}


class _RunsCode:
    """Pickled, it would create a marker file when loaded."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/zsl-bad-input-code-ran")


def _damaged(files: dict[str, Path], name: str, change) -> Path:
    """A copy of the feature store with ``change(h5py.File)`` applied."""
    path = files["tmp"] / f"{name}.h5"
    path.write_bytes(files["features"].read_bytes())
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _set_split(name: str, rows: list[int]):
    def change(f: h5py.File) -> None:
        del f[f"splits/{name}"]
        f[f"splits/{name}"] = np.array(rows, dtype=np.int64)
    return change


def _nan_row(f: h5py.File) -> None:
    f["features"][2] = np.nan


def _nan_attribute_text(path: Path) -> Path:
    with h5py.File(path, "r+") as f:
        f["attribute_text/values"][0, 0] = np.nan
    return path


CASES = {
    "batch size 0": (["extract", "--batch-size", "0", "--output", "{tmp}/x.h5"], "'--batch-size': 0 is not in the range x>=1"),
    "workers -1": (["extract", "--workers", "-1", "--output", "{tmp}/x.h5"], "'--workers': -1 is not in the range x>=0"),
    "image size 0": (["extract", "--image-size", "0", "--output", "{tmp}/x.h5"], "'--image-size': 0 is not in the range x>=16"),
    "val fraction 1.5": (["train", "--model", "eszsl", "--val-fraction", "1.5"], "'--val-fraction': 1.5 is not in the range 0<x<1"),
    "seed zero": (["train", "--model", "eszsl", "--seed", "zero"], "'--seed': 'zero' is not a valid integer"),
    "epochs ten": (["train", "--model", "drmn", "--features", "{features}", "--semantics", "{semantics}",
                    "--hparam", "epochs=ten", "--output", "{model}"], "drmn: epochs: 'ten' is not a whole number"),
    "split out of range": (["train", "--model", "eszsl", "--features", "{out_of_range}", "--semantics", "{semantics}",
                            "--output", "{model}"], "split test_unseen holds row indices outside 0..7"),
    "empty test_unseen": (["evaluate", "--model-file", "{model}", "--features", "{empty_unseen}", "--semantics",
                           "{semantics}", "--metrics", "{metrics}"], "the test_unseen split is empty"),
    "empty trainval": (["train", "--model", "eszsl", "--features", "{empty_trainval}", "--semantics", "{semantics}",
                        "--output", "{model}"], "the trainval split is empty"),
    "NaN feature row": (["train", "--model", "eszsl", "--features", "{nan_row}", "--semantics", "{semantics}",
                         "--output", "{model}"], "split trainval has 1 feature rows with NaN or inf (rows [2])"),
    "NaN attribute_text": (["train", "--model", "eszsl", "--features", "{features}", "--semantics", "{nan_text}",
                            "--output", "{model}"], "attribute_text (the attribute-name vectors) holds NaN"),
    "random bytes as model": (["evaluate", "--model-file", "{random_model}", "--features", "{features}", "--semantics",
                               "{semantics}", "--metrics", "{metrics}"], "not a model checkpoint this package can load"),
    "random bytes as CLIP weights": (["extract", "--dataset", "folder", "--root", "{images}", "--backbone", "clip:RN50",
                                      "--pretrained", "{random_model}", "--output", "{tmp}/x.h5"],
                                     "random.pt is not an open_clip checkpoint that loads safely"),
    "code-running pickle as CLIP weights": (["extract", "--dataset", "folder", "--root", "{images}", "--backbone",
                                             "clip:RN50", "--pretrained", "{evil}", "--output",
                                             "{tmp}/x.h5"], "evil.pt is not an open_clip checkpoint that loads safely"),
    "semantics file given to info": (["info", "{semantics}"], "a semantics file (made by python cli.py semantics), not a "
                                                              "feature store"),
    "unknown CLIP weights for class names": (["semantics", "--features", "{features}", "--output", "{tmp}/s.h5",
                                              "--text", "clip", "--clip-pretrained", "no-such-tag"],
                                             "--clip-pretrained (semantics.clip_pretrained) 'no-such-tag' is not a"),
    "splits for a dataset without": (["extract", "--dataset", "synthetic", "--root", "{images}", "--splits",
                                      "{metrics}", "--output", "{tmp}/x.h5"], "synthetic: --splits"),
    "unseen class without a folder": (["extract", "--dataset", "folder", "--root", "{images}", "--splits",
                                       "{unseen}", "--output", "{tmp}/x.h5"], "unseen classes have no folder"),
    "ks zero": (["evaluate", "--model-file", "{model}", "--features", "{features}", "--semantics", "{semantics}",
                 "--metrics", "{metrics}", "--ks", "0,5"], "'0,5': expected positive whole numbers"),
    "max failures inf": (["extract", "--dataset", "folder", "--root", "{images}", "--max-failures", "inf", "--output",
                          "{tmp}/x.h5"], "max_failures must be a fraction in [0, 1) or a whole count, got inf"),
    "seed beyond 32 bits": (["train", "--model", "eszsl", "--seed", "99999999999999999999"],
                            "'--seed': 99999999999999999999 is not in the range"),
    "candidate sets as a JSON list": (["evaluate", "--model-file", "{model}", "--features", "{features}", "--semantics",
                                       "{semantics}", "--metrics", "{metrics}", "--candidate-sets", "{tmp}/list.json"],
                                      "list.json: candidate sets must be a JSON object"),
    "unwritable synthesize output": (["synthesize", "--output", "/proc/zsl-synthetic"],
                                     "/proc/zsl-synthetic: cannot write the synthetic dataset"),
    "feature store as model": (["predict", "--model-file", "{features}", "--features", "{features}"],
                               "features.h5: an HDF5 file (a feature store or semantics file), not a model checkpoint"),
    "model name typo": (["train", "--model", "jont_gcn", "--features", "{features}", "--semantics", "{semantics}",
                         "--output", "{model}"], "'--model': 'jont_gcn' is not one of 'eszsl', 'joint_gcn'"),
    "truncated model": (["evaluate", "--model-file", "{truncated_model}", "--features", "{features}", "--semantics",
                         "{semantics}", "--metrics", "{metrics}"], "not a model checkpoint this package can load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cli_input_is_one_error_line_and_finished_outputs_stay(files, case):
    tmp = files["tmp"]
    if case == "NaN attribute_text" and not (tmp / "nan_text.h5").exists():
        (tmp / "nan_text.h5").write_bytes(files["semantics"].read_bytes())
        _nan_attribute_text(tmp / "nan_text.h5")
    damaged = {"out_of_range": ("out_of_range", _set_split("test_unseen", [6, 99])),
               "empty_unseen": ("empty_unseen", _set_split("test_unseen", [])),
               "empty_trainval": ("empty_trainval", _set_split("trainval", [])),
               "nan_row": ("nan_row", _nan_row)}
    args, culprit = CASES[case]
    names = {key: str(files[key]) for key in ("features", "semantics", "model", "metrics")} | {"tmp": str(tmp)}
    for key, (name, change) in damaged.items():
        if "{" + key + "}" in " ".join(args):
            names[key] = str(_damaged(files, name, change))
    names["nan_text"] = str(tmp / "nan_text.h5")
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    (tmp / "truncated.pt").write_bytes(files["model"].read_bytes()[:300])
    names |= {"random_model": str(tmp / "random.pt"), "truncated_model": str(tmp / "truncated.pt"),
              "images": str(files["images"]), "evil": str(files["evil"]), "unseen": str(files["unseen"])}
    (tmp / "list.json").write_text('["n02084071", "n02121808"]')
    model_bytes = files["model"].read_bytes()
    result = CliRunner().invoke(cli, [a.format(**names) for a in args])
    assert result.exit_code != 0 and not isinstance(result.exception, (TypeError, KeyError, IndexError, ValueError))
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and culprit in errors[0], result.output
    assert files["model"].read_bytes() == model_bytes and files["metrics"].read_text() == '{"finished": true}'
    assert not MARKER.exists()


def test_hostile_image_files_are_counted_failures_never_a_hang_or_a_traceback(files, tmp_path):
    """An 1 x 1,000,000 PNG (resizing its short side would take gigabytes), a FIFO named .jpg (reading it would
    block forever) and a symlink loop, among 3 good images."""
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (40, 30), (60 * k, 90, 30)).save(folder / f"{k}.png")
    Image.new("L", (1, 1_000_000)).save(folder / "tall.png")
    assert (folder / "tall.png").stat().st_size < 4000  # a few bytes a row
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg")
    extract = [sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "folder", "--root", str(tmp_path / "images"),
               "--backbone", "resnet18", "--pretrained", "none", "--image-size", "32", "--workers", "0",
               "--output", str(tmp_path / "f.h5")]
    run = subprocess.run([*extract, "--max-failures", "3"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr[-800:]  # exit 3: failures recorded
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.complete and int(store.ok.sum()) == 3
        reasons = " ".join(store.failures.values())
    assert "aspect ratio" in reasons and reasons.count("not a regular file") == 2
    run = subprocess.run([*extract, "--max-failures", "2", "--output", str(tmp_path / "g.h5")], capture_output=True,
                         text=True, timeout=300)
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
    assert run.returncode == 1 and len(errors) == 1 and "3 of 6 images could not be read" in errors[0], run.stderr
    result = CliRunner().invoke(cli, ["predict", str(folder), "--model-file", str(files["model"])])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "not a regular file" in errors[0], result.output


def test_outputs_into_a_read_only_folder_are_one_line_each(files, read_only_folder):
    ro = read_only_folder
    common = {"features": str(files["features"]), "semantics": str(files["semantics"]), "model": str(files["model"])}
    runs = {
        "extract": (["extract", "--dataset", "folder", "--root", str(files["images"]), "--backbone", "resnet18",
                     "--pretrained", "none", "--image-size", "32", "--workers", "0", "--output", f"{ro}/f.h5"],
                    f"{ro}/f.h5: cannot write in {ro} (Read-only file system)"),
        "semantics": (["semantics", "--features", common["features"], "--output", f"{ro}/s.h5", "--text", "glove"],
                      f"{ro}/s.h5: cannot write the semantics (Read-only file system)"),
        "train": (["train", "--model", "eszsl", "--features", common["features"], "--semantics", common["semantics"],
                   "--no-select", "--val-fraction", "0.5", "--output", f"{ro}/model.pt"],
                  f"{ro}/model.pt: cannot write the model (Read-only file system)"),
        "evaluate": (["evaluate", "--model-file", common["model"], "--features", common["features"], "--semantics",
                      common["semantics"], "--metrics", f"{ro}/metrics.json", "--plots", str(files["tmp"] / "plots")],
                     f"{ro}/metrics.json: cannot write the metrics (Read-only file system)"),
        "evaluate plots": (["evaluate", "--model-file", common["model"], "--features", common["features"],
                            "--semantics", common["semantics"], "--metrics", str(files["tmp"] / "ro-plots.json"),
                            "--plots", f"{ro}/plots"], f"{ro}/plots/per_class.json: cannot write the plot (Read-only file system)"),
    }
    for command, (args, culprit) in runs.items():
        result = CliRunner().invoke(cli, args)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert result.exit_code == 1 and len(errors) == 1 and culprit in errors[0], (command, result.output)


@pytest.mark.parametrize("delay", [1.0, 4.0])
def test_ctrl_c_in_a_dvc_stage_is_one_line_and_leaves_no_dataset(tmp_path, delay):
    """While the stage starts (1 s) and while it draws images (4 s: 19,200 of them take longer)."""
    params = _with("synthetic.images_per_class", 400)
    params["data"]["root"] = str(tmp_path / "syn")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen([sys.executable, "-m", "stages.synthesize"], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "syn" / "synthetic.json").exists()


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0])
def test_ctrl_c_while_starting_is_one_line(delay):
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "info", "nothing.h5"], stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    time.sleep(delay)  # inside the imports (torch takes seconds), C++ initialisers included
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr


def _without(key: str):
    return lambda c: {k: v for k, v in c.items() if k != key}


def _with_field(key: str, value):
    return lambda c: {**c, key: value}


def _with_state(change):
    return lambda c: {**c, "state": change(dict(c["state"]))}


def _first_net_tensor_halved(state: dict) -> dict:
    key = next(k for k in state if k.startswith("net.") and state[k].ndim == 2)
    return {**state, key: state[key][: state[key].shape[0] // 2]}


CHECKPOINTS = {  # a damaged copy of a trained model -> what the one error line says
    "no config": ("eszsl", _without("config"), "a damaged model checkpoint (no 'config')"),
    "hparams as a list": ("eszsl", _with_field("hparams", [1, 2]), "'hparams' is a list"),
    "gamma as text": ("eszsl", _with_field("gamma", "high"), "'gamma' is a str"),
    "seen out of range": ("eszsl", _with_field("seen", [0, 99]), "'seen' holds indices outside the 4 classes"),
    "classes as numbers": ("eszsl", _with_field("classes", [1, 2, 3, 4]), "'classes' holds something other"),
    "state without its matrix": ("eszsl", _with_state(lambda s: {}), "its eszsl state does not fit the model"),
    "a matrix of the wrong shape": ("eszsl", _with_state(lambda s: {"V": s["V"][:2]}),
                                    "features are 4-d but the model was fitted on 1-d"),
    "a GCN weight of the wrong shape": ("joint_gcn", _with_state(_first_net_tensor_halved),
                                        "its joint_gcn state does not fit the model"),
    "an unknown model": ("eszsl", _with_field("model", "svm"), "unknown model 'svm'"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_damaged_checkpoint_is_one_line_naming_the_file(files, case):
    model_name, damage, says = CHECKPOINTS[case]
    trained = files["tmp"] / f"{model_name}.pt"
    if not trained.is_file():
        assert CliRunner().invoke(cli, ["train", "--model", model_name, "--features", str(files["features"]),
                                        "--semantics", str(files["semantics"]), "--no-select", "--val-fraction",
                                        "0.5", "--hparam", "epochs=2" if model_name == "joint_gcn" else "k=3",
                                        "--output", str(trained)]).exit_code == 0
    damaged = files["tmp"] / "damaged.pt"
    torch.save(damage(torch.load(trained, weights_only=True)), damaged)
    for command in (["evaluate", "--model-file", str(damaged), "--features", str(files["features"]), "--semantics",
                     str(files["semantics"]), "--metrics", str(files["tmp"] / "m.json"), "--plots",
                     str(files["tmp"] / "p")],
                    ["predict", "--model-file", str(damaged), "--features", str(files["features"])]):
        result = CliRunner().invoke(cli, command)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert result.exit_code == 1 and len(errors) == 1 and says in errors[0], (command[0], result.output)
        assert "damaged.pt" in errors[0] or case in ("an unknown model", "a matrix of the wrong shape")


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_an_output_that_is_a_special_file_or_a_link_is_refused_and_left_as_it_is(files, tmp_path, kind):
    target = tmp_path / "target.txt"
    target.write_text("kept")
    outputs = {name: tmp_path / f"{name}.out" for name in ("extract", "semantics", "train", "evaluate", "predict")}
    for path in outputs.values():
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            path.symlink_to(target)
        else:
            path.mkdir()
    runs = {
        "extract": ["extract", "--dataset", "folder", "--root", str(files["images"]), "--backbone", "resnet18",
                    "--pretrained", "none", "--image-size", "32", "--workers", "0", "--output", str(outputs["extract"])],
        "semantics": ["semantics", "--features", str(files["features"]), "--output", str(outputs["semantics"]),
                      "--text", "glove"],
        "train": ["train", "--model", "eszsl", "--features", str(files["features"]), "--semantics",
                  str(files["semantics"]), "--no-select", "--val-fraction", "0.5", "--output", str(outputs["train"])],
        "evaluate": ["evaluate", "--model-file", str(files["model"]), "--features", str(files["features"]),
                     "--semantics", str(files["semantics"]), "--metrics", str(outputs["evaluate"]), "--plots",
                     str(tmp_path / "plots")],
        "predict": ["predict", "--model-file", str(files["model"]), "--features", str(files["features"]), "--output",
                    str(outputs["predict"])],
    }
    for command, args in runs.items():
        result = CliRunner().invoke(cli, args)
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert result.exit_code == 1 and len(errors) == 1, (command, result.output)
        assert ("symbolic link" if kind == "symlink" else "not a regular file") in errors[0], (command, errors[0])
        path = outputs[command]
        assert {"fifo": path.is_fifo, "symlink": path.is_symlink, "folder": path.is_dir}[kind](), command
    assert target.read_text() == "kept"
