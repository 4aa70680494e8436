"""`zsl compare`: metrics files and DVC experiments as one table and one overlay plot."""
from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.compare import compare, read_run
from pipeline.errors import PipelineError


def _run_files(folder: Path, model: str, czsl: float, h: float, seed: int = 0) -> Path:
    """A metrics file as ``evaluate`` writes it, and its curve and per-class rows in ``folder/plots``."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"run": {"dataset": "synthetic", "backbone": "efficientnet_lite0", "semantics": "attributes",
                       "model": model, "hparams": "ridge=1.0", "fixed": "", "seed": seed},
               "model": model, "czsl": {"acc": czsl}, "gzsl": {"U": h, "S": h, "H": h, "gamma": 0.1}, "ausuc": h / 2}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "plots").mkdir(exist_ok=True)
    curve = [{"S": 1.0 - t, "U": t * h * 2, "gamma": t} for t in (0.0, 0.25, 0.5)]
    (folder / "plots/seen_unseen.json").write_text(json.dumps(curve))
    classes = [{"class": "red dotted star", "images": 4, "acc": 0.25, "mistaken_for": "red solid star",
                "mistaken_share": 0.75}, {"class": "blue solid circle", "images": 4, "acc": 1.0, "mistaken_for": "",
                                          "mistaken_share": 0.0}]
    (folder / "plots/per_class.json").write_text(json.dumps(classes))
    return folder / "metrics.json"


def test_runs_differing_only_in_seed_get_mean_and_std_and_each_run_its_worst_classes(tmp_path):
    runs = [str(_run_files(tmp_path / f"s{seed}", "joint_gcn", czsl, 0.5, seed))
            for seed, czsl in ((0, 0.8), (1, 0.9), (2, 0.7))]
    runs.append(str(_run_files(tmp_path / "other", "eszsl", 0.6, 0.4, 0)))  # another model: not in the group
    runs.append(str(_run_files(tmp_path / "again", "joint_gcn", 0.1, 0.5, 2)))  # seed 2 again: left out of the mean
    compare(runs, tmp_path / "t.md", tmp_path / "t.csv", None, tmp_path / "c.md", tmp_path / "c.png")
    table = (tmp_path / "t.md").read_text().splitlines()
    assert len(table) == 2 + 5 + 1 and table[-1].startswith("| mean ± std, 3 seeds (0, 1, 2)")
    assert "| joint_gcn |" in table[-1] and "| 0.8 ± 0.0816 | 0.5 ± 0.0 |" in table[-1]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [r["run"].split(" ")[0] for r in rows[5:]] == ["mean", "std"] and float(rows[6]["CZSL"]) == 0.0816
    classes = (tmp_path / "c.md").read_text()
    assert classes.count("### ") == 5 and "### joint_gcn (" in classes
    assert "| red dotted star | 4 | 0.25 | red solid star (0.75) |" in classes
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_metrics_files_writes_one_table_and_one_plot(tmp_path):
    a = _run_files(tmp_path / "a", "eszsl", 0.7, 0.4)
    b = _run_files(tmp_path / "b", "joint_gcn", 0.8, 0.5)
    runs = compare([str(a), f"{b}::{tmp_path / 'b/plots'}"], tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.png")
    assert [r.curve is not None for r in runs] == [True, True]
    table = (tmp_path / "t.md").read_text().splitlines()
    assert len(table) == 4 and "| eszsl |" in table[2] and "| 0.8 | 0.5 | 0.5 | 0.5 | 0.25 |" in table[3]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [(r["model"], float(r["H"])) for r in rows] == [("eszsl", 0.4), ("joint_gcn", 0.5)]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_reads_git_revisions_and_dvc_experiments(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    _run_files(tmp_path, "eszsl", 0.7, 0.4)
    git("add", ".")
    git("commit", "-qm", "eszsl")
    git("update-ref", "refs/exps/ab/cdef0123/lucid-gcn", "HEAD")  # where dvc exp run keeps an experiment
    _run_files(tmp_path, "joint_gcn", 0.8, 0.5)  # the workspace moved on
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["compare"])  # default: metrics.json and every experiment
    assert result.exit_code == 0, result.output
    assert "| workspace | joint_gcn |" in result.output and "| lucid-gcn | eszsl |" in result.output
    assert read_run("HEAD").metrics["model"] == "eszsl" and read_run("HEAD").curve is not None
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "comparison.csv").is_file()
    assert (tmp_path / "comparison_classes.md").is_file() and read_run("HEAD").classes[0]["acc"] == 0.25
    with pytest.raises(PipelineError, match="neither a metrics file nor a git revision"):
        read_run("no-such-run")


MALFORMED = {  # file -> text: each one line naming the file, never a traceback
    "metrics as a JSON list": ("metrics.json", "[]", "a JSON list, not a JSON object"),
    "metrics not JSON": ("metrics.json", "{", "not JSON"),
    "gzsl as a list": ("metrics.json", '{"gzsl": []}', "gzsl is not an object"),
    "H as text": ("metrics.json", '{"gzsl": {"U": 0.1, "S": 0.2, "H": "high"}}', "gzsl.H not a number"),
    "curve of numbers": ("plots/seen_unseen.json", "[1, 2]", "item 0 lacks one of S, U"),
    "curve point without U": ("plots/seen_unseen.json", '[{"S": 0.5}]', "item 0 lacks one of S, U"),
    "per-class rows as an object": ("plots/per_class.json", "{}", "a JSON dict, not a JSON list"),
    "per-class accuracy as text": ("plots/per_class.json", '[{"class": "a", "images": 1, "acc": "x", '
                                   '"mistaken_for": "", "mistaken_share": 0}]', "item 0 lacks one of class"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_run_file_is_one_line_naming_it(tmp_path, case):
    name, text, says = MALFORMED[case]
    metrics = _run_files(tmp_path, "eszsl", 0.7, 0.4)
    (tmp_path / name).write_text(text)
    result = CliRunner().invoke(cli, ["compare", str(metrics), "--table", str(tmp_path / "t.md")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert name.split("/")[-1] in errors[0] and says in errors[0], errors[0]


def test_a_source_is_never_passed_to_git_as_an_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["compare", "--", "--output=written-by-git"])
    assert result.exit_code == 1 and "never starts with '-'" in result.output
    assert not (tmp_path / "written-by-git").exists()
