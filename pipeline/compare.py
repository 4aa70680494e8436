"""Compare runs: any set of metrics files or DVC experiments as one table (markdown and CSV; runs that
differ only in their seed also as mean ± std), one overlay plot of their seen-unseen curves, each model's
operating point (its chosen γ) marked, and a per-class view: each run's worst unseen classes and what
they are mistaken for (a table and a figure).

A run is read from

* a metrics file written by ``evaluate`` (``metrics.json``, or ``FILE::PLOTS`` naming the folder
  of its curve and per-class table; by default ``plots/`` beside the file), or
* a git revision or DVC experiment name (``dvc exp run`` commits ``metrics.json`` and ``plots/``):
  the files as that revision holds them.

By default: the workspace's ``metrics.json`` (named ``workspace``) and every DVC experiment.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.outputs import write_whole
from pipeline.plots import Curve, plot_seen_unseen_curves, plot_worst_classes

CURVE = "seen_unseen.json"
CLASSES = "per_class.json"
COLUMNS = ("run", "model", "semantics", "backbone", "dataset", "CZSL", "U", "S", "H", "AUSUC", "hparams")
NUMBERS = ("CZSL", "U", "S", "H", "AUSUC")
WORST = 10  # unseen classes per run in the per-class view
SAME_BUT_SEED = ("dataset", "backbone", "weights", "semantics", "model", "fixed")  # what a seed group shares


@dataclass(frozen=True)
class Run:
    """One run's name, metrics (``evaluate``'s JSON), seen-unseen curve points and per-class rows (None or
    []: none)."""

    name: str
    metrics: dict[str, Any]
    curve: list[dict[str, float]] | None
    classes: list[dict[str, Any]] | None = None

    @property
    def label(self) -> str:
        """``joint_gcn (lucid-gcn)``: the model, then the run."""
        return f"{self.metrics.get('model', '?')} ({self.name})"

    def row(self) -> dict[str, Any]:
        """The table row: what produced the run (``metrics["run"]``) and its headline numbers."""
        m, run = self.metrics, self.metrics.get("run", {})
        gzsl = m.get("gzsl", {})
        czsl = m.get("czsl", {}).get("acc", m.get("zsl", {}).get("mAP"))
        numbers = {"CZSL": czsl, "U": gzsl.get("U"), "S": gzsl.get("S"),
                   "H": gzsl.get("H", gzsl.get("mAP")), "AUSUC": m.get("ausuc")}
        return {"run": self.name, "model": m.get("model", run.get("model", "?")), "semantics": run.get("semantics", ""),
                "backbone": run.get("backbone", ""), "dataset": run.get("dataset", ""),
                **{k: (round(float(v), 4) if v is not None else "") for k, v in numbers.items()},
                "hparams": run.get("hparams", "")}


def _git_show(revision: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else None


def experiment_refs() -> dict[str, str]:
    """DVC experiments of this repository: name -> git ref (``refs/exps/...``)."""
    result = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                            text=True, check=False)
    refs = [r for r in result.stdout.split() if r.count("/") >= 4]  # refs/exps/ab/cdef.../<name>
    return {r.rsplit("/", 1)[1]: r for r in refs}


def read_run(source: str) -> Run:
    """A run from a metrics file (``FILE`` or ``FILE::PLOTS``) or a git revision / DVC experiment name; each
    file checked to be what ``evaluate`` writes."""
    file, _, plots = source.partition("::")
    path = Path(file)
    if path.is_file():
        folder = Path(plots) if plots else path.parent / "plots"
        texts = {name: (place.read_text(errors="replace") if place.is_file() else None)
                 for name, place in (("metrics.json", path), (CURVE, folder / CURVE), (CLASSES, folder / CLASSES))}
        where = {"metrics.json": str(path), CURVE: str(folder / CURVE), CLASSES: str(folder / CLASSES)}
    else:
        if source.startswith("-"):  # never handed to git, where it would be an option
            raise PipelineError(f"{source!r}: no such metrics file, and a git revision never starts with '-'")
        revision = experiment_refs().get(source, source)
        texts = {name: _git_show(revision, name if name == "metrics.json" else f"plots/{name}")
                 for name in ("metrics.json", CURVE, CLASSES)}
        if texts["metrics.json"] is None:
            raise PipelineError(f"{source!r} is neither a metrics file nor a git revision or DVC experiment with "
                                "metrics.json (dvc exp list shows the experiments)")
        where = {name: f"{source}:{name if name == 'metrics.json' else 'plots/' + name}" for name in texts}
    values = {name: _parsed(text, where[name], name) for name, text in texts.items()}
    return Run(file, values["metrics.json"], values[CURVE], values[CLASSES])


_NUMBER = (int, float)
# what each file holds, as evaluate writes it: (its JSON type, for lists the keys each item needs with their types)
_SCHEMAS: dict[str, tuple[type, dict[str, Any]]] = {
    "metrics.json": (dict, {}),
    CURVE: (list, {"S": _NUMBER, "U": _NUMBER}),
    CLASSES: (list, {"class": str, "images": int, "acc": _NUMBER, "mistaken_for": str, "mistaken_share": _NUMBER}),
}


def _parsed(text: str | None, where: str, name: str) -> Any:
    """The JSON of one of a run's files, checked against what ``evaluate`` writes (None: no such file)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{where}: not JSON ({e}); re-run evaluate, or leave this run out") from None
    kind, keys = _SCHEMAS[name]
    problem = f"a JSON {type(value).__name__}, not a JSON {'object' if kind is dict else 'list'}"
    if isinstance(value, kind):
        if kind is dict:
            problem = _metrics_problem(value)
        else:
            bad = next((i for i, item in enumerate(value) if not isinstance(item, dict)
                        or any(not isinstance(item.get(k), t) or isinstance(item.get(k), bool) for k, t in keys.items())),
                       None)
            problem = (f"item {bad} lacks one of {', '.join(keys)} (or has the wrong type)" if bad is not None else "")
    if problem:
        raise PipelineError(f"{where}: not {name} as evaluate writes it ({problem}); re-run evaluate, or leave this "
                            "run out")
    return value


def _metrics_problem(metrics: dict[str, Any]) -> str:
    """What is wrong with a metrics dict ("" when nothing): its sections and headline numbers."""
    for section in ("run", "czsl", "zsl", "gzsl"):
        if section in metrics and not isinstance(metrics[section], dict):
            return f"{section} is not an object"
    numbers = {"czsl.acc": metrics.get("czsl", {}).get("acc"), "zsl.mAP": metrics.get("zsl", {}).get("mAP"),
               "ausuc": metrics.get("ausuc"), **{f"gzsl.{k}": metrics.get("gzsl", {}).get(k) for k in ("U", "S", "H")}}
    bad = [k for k, v in numbers.items() if v is not None and (not isinstance(v, _NUMBER) or isinstance(v, bool))]
    return f"{', '.join(bad)} not a number" if bad else ""


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups of two or more runs that differ only in their seed (and the hyperparameters selection chose):
    the same dataset, backbone, weights, semantics, model and fixed hyperparameters, one run per seed (the
    first given)."""
    groups: dict[tuple[Any, ...], dict[Any, Run]] = {}
    for r in runs:
        described = r.metrics.get("run", {})
        if "seed" in described:  # one run per seed (the workspace is often also an experiment)
            groups.setdefault(tuple(described.get(k) for k in SAME_BUT_SEED), {}).setdefault(described["seed"], r)
    return [list(g.values()) for g in groups.values() if len(g) > 1]


def _summary_rows(group: list[Run]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A seed group's mean row and std row (the numbers its runs all have) and its description."""
    rows = [r.row() for r in group]
    seeds = ", ".join(str(r.metrics["run"]["seed"]) for r in group)
    what = f"{len(group)} seeds ({seeds}): {', '.join(r.name for r in group)}"
    mean, std = {**rows[0], "hparams": ""}, {**rows[0], "hparams": ""}
    for c in NUMBERS:
        values = [row[c] for row in rows]
        if all(v != "" for v in values):
            mean[c], std[c] = round(float(np.mean(values)), 4), round(float(np.std(values)), 4)
        else:
            mean[c] = std[c] = ""
    return {**mean, "run": f"mean of {what}"}, {**std, "run": f"std of {what}"}, what


def markdown(runs: list[Run]) -> str:
    """The runs as a markdown table, then one ``mean ± std`` row per group of runs differing only in seed."""
    def line(row: dict[str, Any]) -> str:
        return "| " + " | ".join(str(row[c]) for c in COLUMNS) + " |"

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS), *(line(r.row()) for r in runs)]
    for group in seed_groups(runs):
        mean, std, what = _summary_rows(group)
        both = {c: (f"{mean[c]} ± {std[c]}" if mean[c] != "" else "") for c in NUMBERS}
        lines.append(line({**mean, **both, "run": f"mean ± std, {what}"}))
    return "\n".join(lines) + "\n"


def table_csv(runs: list[Run]) -> str:
    """The runs as CSV, then a ``mean of ...`` and a ``std of ...`` row per group differing only in seed."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in runs)
    for group in seed_groups(runs):
        writer.writerows(_summary_rows(group)[:2])
    return buffer.getvalue()


def class_markdown(runs: list[Run], worst: int = WORST) -> str:
    """Per run, its ``worst`` unseen classes (CZSL top-1 accuracy) and the class each is most often
    mistaken for."""
    parts = []
    for r in runs:
        if not r.classes:
            continue
        lines = [f"### {r.label}: the {min(worst, len(r.classes))} worst of {len(r.classes)} unseen classes", "",
                 "| class | images | accuracy | mistaken for (share of its images) |", "|---|---|---|---|"]
        lines += [f"| {c['class']} | {c['images']} | {c['acc']} | "
                  + (f"{c['mistaken_for']} ({c['mistaken_share']})" if c["mistaken_for"] else "") + " |"
                  for c in r.classes[:worst]]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot_classes(runs: list[Run], path: Path, worst: int = WORST) -> Path:
    """One panel per run with per-class rows (:func:`pipeline.plots.plot_worst_classes`)."""
    return plot_worst_classes([(r.label, r.classes) for r in runs if r.classes], path, worst)


def compare(sources: list[str], table: Path | None = None, csv_path: Path | None = None,
            plot: Path | None = None, class_table: Path | None = None, class_plot: Path | None = None) -> list[Run]:
    """Read the runs (default: the workspace's ``metrics.json`` and every DVC experiment), write the table as
    markdown and CSV, the overlay plot and the per-class table and figure where asked (those two only when
    some run has per-class rows: runs evaluated by an older version have none); returns the runs."""
    workspace = not sources and Path("metrics.json").is_file()
    if not sources:
        sources = (["metrics.json"] if workspace else []) + sorted(experiment_refs())
    if not sources:
        raise PipelineError("nothing to compare: give metrics files or experiment names (dvc exp run ...)")
    runs = [read_run(s) for s in sources]
    if workspace:
        runs[0] = replace(runs[0], name="workspace")
    if table is not None:
        write_whole(table, markdown(runs), "comparison table")
    if csv_path is not None:
        write_whole(csv_path, table_csv(runs), "comparison table")
    if plot is not None:
        curves = [Curve(r.label, np.array([p["S"] for p in r.curve]), np.array([p["U"] for p in r.curve]),
                        (r.metrics["gzsl"]["S"], r.metrics["gzsl"]["U"]) if "U" in r.metrics.get("gzsl", {}) else None)
                  for r in runs if r.curve]
        if not curves:
            raise PipelineError("no seen-unseen curve among these runs (multi-label runs have none); drop --plot")
        plot_seen_unseen_curves(curves, plot, "seen-unseen curves")
    if any(r.classes for r in runs):
        if class_table is not None:
            write_whole(class_table, class_markdown(runs), "comparison table")
        if class_plot is not None:
            plot_classes(runs, class_plot)
    return runs
