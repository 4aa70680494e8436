"""Compare runs: any set of metrics files or DVC experiments as one table (markdown and CSV) and one
overlay plot of their seen-unseen curves, each model's operating point (its chosen γ) marked.

A run is read from

* a metrics file written by ``evaluate`` (``metrics.json``, or ``FILE::PLOTS`` naming the folder
  of its curve; by default ``plots/`` beside the file), or
* a git revision or DVC experiment name (``dvc exp run`` commits ``metrics.json`` and ``plots/``):
  both files as that revision holds them.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.metrics import Curve, plot_seen_unseen_curves
from pipeline.outputs import write_whole

CURVE = "seen_unseen.json"
COLUMNS = ("run", "model", "semantics", "backbone", "dataset", "CZSL", "U", "S", "H", "AUSUC", "hparams")


@dataclass(frozen=True)
class Run:
    """One run's name, metrics (``evaluate``'s JSON) and seen-unseen curve points (None or []: none)."""

    name: str
    metrics: dict[str, Any]
    curve: list[dict[str, float]] | None

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
    """A run from a metrics file (``FILE`` or ``FILE::PLOTS``) or a git revision / DVC experiment name."""
    file, _, plots = source.partition("::")
    path = Path(file)
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PipelineError(f"{path}: not a metrics JSON file ({e})") from None
        curve_path = (Path(plots) if plots else path.parent / "plots") / CURVE
        curve = json.loads(curve_path.read_text()) if curve_path.is_file() else None
        return Run(file, metrics, curve)
    revision = experiment_refs().get(source, source)
    text = _git_show(revision, "metrics.json")
    if text is None:
        raise PipelineError(f"{source!r} is neither a metrics file nor a git revision or DVC experiment with "
                            "metrics.json (dvc exp list shows the experiments)")
    curve = _git_show(revision, f"plots/{CURVE}")
    return Run(source, json.loads(text), json.loads(curve) if curve else None)


def markdown(runs: list[Run]) -> str:
    """The runs as a markdown table."""
    rows = [r.row() for r in runs]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_csv(runs: list[Run]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in runs)
    return buffer.getvalue()


def compare(sources: list[str], table: Path | None = None, csv_path: Path | None = None,
            plot: Path | None = None) -> list[Run]:
    """Read the runs (default: ``metrics.json`` and every DVC experiment), write the table as markdown
    and CSV and the overlay plot where asked; returns the runs."""
    if not sources:
        sources = (["metrics.json"] if Path("metrics.json").is_file() else []) + sorted(experiment_refs())
    if not sources:
        raise PipelineError("nothing to compare: give metrics files or experiment names (dvc exp run ...)")
    runs = [read_run(s) for s in sources]
    if table is not None:
        write_whole(table, markdown(runs), "comparison table")
    if csv_path is not None:
        write_whole(csv_path, table_csv(runs), "comparison table")
    if plot is not None:
        curves = [Curve(r.name, np.array([p["S"] for p in r.curve]), np.array([p["U"] for p in r.curve]),
                        (r.metrics["gzsl"]["S"], r.metrics["gzsl"]["U"]) if "U" in r.metrics.get("gzsl", {}) else None)
                  for r in runs if r.curve]
        if not curves:
            raise PipelineError("no seen-unseen curve among these runs (multi-label runs have none); drop --plot")
        plot_seen_unseen_curves(curves, plot, "seen-unseen curves")
    return runs
