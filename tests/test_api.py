"""The README's Python example runs as written, and `zsl predict` labels images with names old and new."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_toy_store

import pipeline  # noqa: F401
from pipeline.api import evaluate, extract, predict, semantics, train
from pipeline.datasets.synthetic import generate_synthetic
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small synthetic dataset laid out as after the Quick start (features, semantics with MiniLM)."""
    root = tmp_path_factory.mktemp("api")
    generate_synthetic(root / "data/synthetic", images_per_class=4, image_size=48, seed=0)
    extract("synthetic", root / "data/synthetic", root / "features/image_features.h5", grid=True, mid_grid=True,
            workers=0)
    semantics(root / "features/image_features.h5", root / "features/semantics.h5", attributes="synthetic",
              data_root=str(root / "data/synthetic"), text=["minilm", "glove"])
    return root


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"<!-- python example -->\n```python\n(.*?)```", text, re.S).group(1)


def test_readme_python_example_runs_and_labels_images(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"eszsl: CZSL [01]\.\d{3} · GZSL H", out), out  # the evaluation's headline
    assert "images over 3 candidate classes" in out, out
    assert (workdir / "models/minilm.pt").is_file() and (workdir / "metrics-minilm.json").is_file()


def test_new_class_names_are_embedded_by_the_models_encoder(workdir):
    model = workdir / "minilm-model.pt"
    train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", model, model="eszsl",
          source="text:minilm", select=False)
    known = ["red solid square", "blue solid star"]
    images = [workdir / "data/synthetic/images" / c.replace(" ", "_") for c in known]
    result = predict(model, images=images, classes=known + ["purple zigzag hexagon"],
                     semantics=workdir / "features/semantics.h5", k=3, workers=0)
    assert result.classes == known + ["purple zigzag hexagon"] and result.top.shape == (8, 3)
    assert sorted(set(result.top[:, :3].ravel().tolist())) == [0, 1, 2]  # the new name is scored too
    truth = [c for c in known for _ in range(4)]
    assert sum(p == t for p, t in zip(result.labels, truth)) >= 6  # 8 images of two known classes


def test_class_names_are_never_misread(workdir, tmp_path):
    model = workdir / "minilm-model.pt"
    if not model.is_file():
        train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", model, model="eszsl",
              source="text:minilm", select=False)
    args = {"features": workdir / "features/image_features.h5", "semantics": workdir / "features/semantics.h5"}
    # a string is a comma list or a file of names, as --classes reads it, never its letters
    assert predict(model, classes="red solid square,blue solid star", **args).classes == [
        "red solid square", "blue solid star"]
    names = tmp_path / "unseen.txt"
    names.write_text("red solid square\nblue solid star\n")
    assert predict(model, classes=str(names), **args).classes == ["red solid square", "blue solid star"]
    for missing in (str(tmp_path / "missing.txt"), "unseen.txt", "lists/unseen"):
        with pytest.raises(PipelineError, match="no such file of class names"):
            predict(model, classes=missing, **args)
    names.write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(PipelineError, match="unseen.txt:1: not UTF-8 text .*; save the class-name list as UTF-8$"):
        predict(model, classes=str(names), **args)


def _trained(workdir: Path, source: str) -> Path:
    model = workdir / f"{source.replace(':', '-')}-model.pt"
    if not model.is_file():
        train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", model, model="eszsl",
              source=source, select=False)
    return model


def _other_semantics(workdir: Path) -> Path:
    """The semantics file with one MiniLM value changed: the same classes, other class vectors (as after a
    semantics run with other settings)."""
    other = workdir / "other-semantics.h5"
    other.write_bytes((workdir / "features/semantics.h5").read_bytes())
    with h5py.File(other, "r+") as f:
        f["text/minilm/values"][0, 0] += 0.5
    return other


# Mistakes that gave a wrong answer with exit status 0 (issue 27), each now an error or a warning:
# (what the user does, the call, what it must say)
SILENT = {
    "a missing --classes file": (
        lambda w: predict(_trained(w, "text:minilm"), features=w / "features/image_features.h5", classes="unseen.txt"),
        "unseen.txt: no such file of class names"),
    "a name GloVe knows no word of": (
        lambda w: predict(_trained(w, "text:glove"), images=[w / "data/synthetic/images"],
                          classes="red solid square,xqzvb plorfy", workers=0),
        "'xqzvb plorfy': glove knows no word of it"),
    "other semantics of the same classes, to evaluate": (
        lambda w: evaluate(_trained(w, "text:minilm"), w / "features/image_features.h5", _other_semantics(w),
                           metrics=w / "m.json", plots=w / "plots-other"),
        "other-semantics.h5: its text:minilm semantics are not those"),
    "other semantics of the same classes, to predict": (
        lambda w: predict(_trained(w, "text:minilm"), features=w / "features/image_features.h5",
                          semantics=_other_semantics(w)),
        "other-semantics.h5: its text:minilm semantics are not those"),
    "an image size other than the model's features'": (
        lambda w: predict(_trained(w, "text:minilm"), images=[w / "data/synthetic/images/red_solid_square"],
                          image_size=160, workers=0),
        "was trained on features with image_size 224 (here 160)"),
    "a feature store as the model": (
        lambda w: predict(w / "features/image_features.h5", features=w / "features/image_features.h5"),
        "image_features.h5: an HDF5 file (a feature store or semantics file), not a model"),
    "a model name typo (refused before any file is read)": (
        lambda w: train(w / "no-such-features.h5", w / "no-such-semantics.h5", w / "x.pt", model="jont_gcn"),
        "unknown model 'jont_gcn'"),
}


@pytest.mark.parametrize("case", list(SILENT))
def test_a_mistake_that_once_passed_silently_is_one_clear_error(workdir, case):
    call, says = SILENT[case]
    with pytest.raises(PipelineError, match=re.escape(says)):
        call(workdir)


def test_what_a_model_file_records_is_what_predict_needs(workdir, caplog):
    """No --semantics or backbone option: the checkpoint's are used; a name with no dictionary word is
    embedded by MiniLM, with a warning that names it."""
    model = _trained(workdir, "text:minilm")
    images = [workdir / "data/synthetic/images/red_solid_square"]
    with caplog.at_level("WARNING"):
        result = predict(model, images=images, classes=["red solid square", "blue solid star", "qwzx blorp"],
                         workers=0)
    assert result.labels == ["red solid square"] * 4
    assert "'qwzx blorp': no word of it is in WordNet's dictionary" in caplog.text
    assert "red solid square" not in caplog.text


def test_names_a_model_on_attributes_cannot_embed_are_one_line_errors(workdir):
    model = workdir / "attributes-model.pt"
    train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", model, model="eszsl",
          select=False)
    with pytest.raises(PipelineError, match="'a new class' is not among the 48 classes .* attribute table"):
        predict(model, features=workdir / "features/image_features.h5", classes=["a new class"],
                semantics=workdir / "features/semantics.h5")


def test_zsl_predict_on_a_feature_store_matches_what_evaluate_reports(workdir):
    model = workdir / "models/minilm.pt"
    if not model.is_file():
        train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", model, model="eszsl",
              source="text:minilm", select=False)
    run = subprocess.run([sys.executable, str(REPO / "cli.py"), "predict", "--features", "features/image_features.h5",
                          "--split", "test_unseen", "--model-file", str(model), "-k", "2", "--output", "p.json"],
                         cwd=workdir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert re.search(r"48 images over 48 candidate classes \(seen classes calibrated\).*top-1 accuracy", run.stdout)
    assert (workdir / "p.json").read_text().startswith("[")


def test_the_readme_label_commands_run_as_written(workdir):
    """The first shell block of "Label your own images", after the Quick start (here: a model on the
    synthetic attributes at the default path), run line by line as the README writes them."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Label your own images.*?```bash\n(.*?)```", text, re.S).group(1)
    (workdir / "models").mkdir(exist_ok=True)
    train(workdir / "features/image_features.h5", workdir / "features/semantics.h5", workdir / "models/model.pt",
          model="eszsl", select=False)
    zsl = [shutil.which("zsl")] if shutil.which("zsl") else [sys.executable, str(REPO / "cli.py")]
    for line in block.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "zsl"
        run = subprocess.run(zsl + args[1:], cwd=workdir, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
        assert run.returncode == 0, (line, run.stderr[-500:])
    assert (workdir / "predictions.csv").read_text().startswith("image,truth,class_1,score_1")


def test_zsl_help_is_fast_and_needs_no_torch():
    run = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "cli.py"), "predict", "--help"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "--classes" in run.stdout
    assert not re.search(r"\| +torch$", run.stderr, re.M)  # importtime lists every module imported


def test_timm_and_torchvision_import_before_pipeline_in_an_installed_environment(tmp_path):
    """The package's start-up hook (zsl_torchvision_hook.pth, written by setup.py) applies the torchvision
    fix however torchvision is first imported: a notebook may start with ``import timm``."""
    import sysconfig

    hook = Path(sysconfig.get_paths()["purelib"]) / "zsl_torchvision_hook.pth"
    if not hook.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{hook} is missing: pip install -e . must install the start-up hook (setup.py)")
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but what pip installed
    run = subprocess.run([sys.executable, "-c", "import timm, torchvision.models, pipeline; print('imported')"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "imported", run.stderr[-500:]


def test_a_graph_model_embeds_any_wordnet_noun_and_refuses_other_names(tmp_path):
    wnids = ["n02084071", "n02121808", "n02374451", "n01503061"]  # dog, cat, horse, bird
    labels = np.repeat(np.arange(4), 4)
    splits = {"trainval": np.array([0, 1, 2, 4, 5, 6, 8, 9, 10]), "test_seen": np.array([3, 7, 11]),
              "test_unseen": np.arange(12, 16)}
    features = write_toy_store(tmp_path / "f.h5", labels, wnids, splits, np.random.default_rng(0).normal(size=(16, 8)))
    semantics(features, tmp_path / "s.h5", text=["glove"], graph="wordnet", graph_text="glove")
    model = tmp_path / "gcn.pt"
    train(features, tmp_path / "s.h5", model, model="gcn_regression", source="text:glove", select=False,
          val_fraction=0.34)
    known = predict(model, features=features, semantics=tmp_path / "s.h5", classes=["n02374451", "n01503061"])
    assert known.classes == ["horse (n02374451)", "bird (n01503061)"] and known.top.shape == (16, 2)
    assert known.truth is not None and known.truth[0] == "dog (n02084071)"  # shown as names, not bare wnids

    # a class by any of its names; new synsets (an ancestor node of the graph, or new to it) by name or id
    names = ["Horse", "animal", "zebra", "dog.n.03"]
    result = predict(model, features=features, semantics=tmp_path / "s.h5", classes=names, k=4)
    assert [(c.label, c.route) for c in result.candidates] == [
        ("horse (n02374451)", "class"), ("animal (n00015388)", "wordnet"), ("zebra (n02391049)", "wordnet"),
        ("dog (n10023039)", "wordnet")]
    assert result.calibrated  # "Horse" is a seen class, however spelt
    assert np.isfinite(result.scores).all() and sorted(set(result.top.ravel().tolist())) == [0, 1, 2, 3]
    by_wnid = predict(model, features=features, semantics=tmp_path / "s.h5", classes=["n02391049", "n00015388"])
    assert np.allclose(by_wnid.scores, predict(model, features=features, semantics=tmp_path / "s.h5",
                                               classes=["zebra", "animal"]).scores)
    with pytest.raises(PipelineError, match="'xyzzy': no WordNet noun .* gcn_regression .* name a synset"):
        predict(model, features=features, semantics=tmp_path / "s.h5", classes=["n02374451", "xyzzy"])
    with pytest.raises(PipelineError, match="name one class twice"):
        predict(model, features=features, semantics=tmp_path / "s.h5", classes=["zebra", "n02391049"])


def test_a_new_wordnet_class_gets_the_node_vector_the_semantics_stage_gives_its_nodes(tmp_path):
    """Glossed, concatenated node vectors: a synset added at predict time is made as the stage made the graph's."""
    from pipeline.predict import candidate_semantics
    from pipeline.train import load_checkpoint

    wnids = ["n02084071", "n02121808", "n02374451", "n01503061"]  # dog, cat, horse, bird
    labels = np.repeat(np.arange(4), 4)
    splits = {"trainval": np.array([0, 1, 2, 4, 5, 6, 8, 9, 10]), "test_seen": np.array([3, 7, 11]),
              "test_unseen": np.arange(12, 16)}
    x = np.random.default_rng(0).normal(size=(16, 8))
    features = write_toy_store(tmp_path / "f.h5", labels, wnids, splits, x)
    settings = {"text": ["minilm"], "graph": "wordnet", "graph_text": "minilm+glove", "glosses": True}
    semantics(features, tmp_path / "s.h5", **settings)
    train(features, tmp_path / "s.h5", tmp_path / "gcn.pt", model="gcn_regression", source="text:minilm",
          select=False, val_fraction=0.34)
    result = predict(tmp_path / "gcn.pt", features=features, semantics=tmp_path / "s.h5", classes=["zebra", "horse"])
    assert [(c.label, c.route) for c in result.candidates] == [("zebra (n02391049)", "wordnet"),
                                                              ("horse (n02374451)", "class")]
    model, checkpoint = load_checkpoint(tmp_path / "gcn.pt")
    extended, rows, _ = candidate_semantics(tmp_path / "gcn.pt", model, checkpoint, tmp_path / "s.h5", ["zebra"])

    # the same synset as a class of the feature file, through the semantics stage
    with_zebra = write_toy_store(tmp_path / "z.h5", np.repeat(np.arange(5), 4), wnids + ["n02391049"],
                                 {"trainval": np.arange(16), "test_unseen": np.arange(16, 20)},
                                 np.random.default_rng(0).normal(size=(20, 8)))
    semantics(with_zebra, tmp_path / "z_s.h5", **settings)
    with h5py.File(tmp_path / "z_s.h5") as f:
        staged = f["graph/node_vectors"][4]
        staged_text = f["text/minilm/values"][4]
    np.testing.assert_allclose(extended.graph.node_vectors[rows[0]], staged, atol=1e-5)
    np.testing.assert_allclose(extended.vectors[rows[0]], staged_text, atol=1e-5)
