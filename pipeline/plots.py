"""The figures: seen-unseen curves (``evaluate``, ``compare``), P/R/F1@k (multi-label ``evaluate``) and
each run's worst unseen classes (``compare``). matplotlib's Agg canvas through ``Figure``: no pyplot, no
display; every figure written whole or not at all."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.metrics import ausuc
from pipeline.outputs import written_whole

FIGURES = "figures"  # the PNG figures' folder inside a plots directory (dvc.yaml declares it)


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PipelineError(f"plots need matplotlib ({e}); pip install matplotlib") from e
    return Figure(figsize=size)


def _save(fig: Any, path: Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    with written_whole(Path(path), "plot") as partial:
        fig.savefig(partial, dpi=dpi, format="png")
    return Path(path)


@dataclass(frozen=True)
class Curve:
    """One model's seen-unseen curve for a plot: ``s``, ``u`` [P] and its operating point (S, U) at the
    chosen γ (None: not marked)."""

    label: str
    s: np.ndarray
    u: np.ndarray
    point: tuple[float, float] | None = None


def plot_seen_unseen_curves(curves: list[Curve], path: str | Path, title: str = "") -> Path:
    """Write the curves (U against S, each labelled with its AUSUC, its operating point marked) as one
    PNG; returns ``path``."""
    fig = _figure((4.5, 4.5) if len(curves) == 1 else (6, 6))
    ax = fig.subplots()
    for curve in curves:
        line, = ax.plot(curve.s, curve.u, marker="." if len(curve.s) <= 50 else None,
                        label=f"{curve.label + ': ' if curve.label else ''}AUSUC {ausuc(curve.s, curve.u):.3f}")
        if curve.point is not None:
            ax.plot(*curve.point, marker="o", markersize=8, markerfacecolor="none", color=line.get_color())
    # axes fit to the data (real-data curves often stay below U 0.3), never beyond 1
    top_s, top_u = (max(max(np.max((c.s, c.u)[i], initial=0.0), c.point[i] if c.point else 0.0) for c in curves)
                    for i in (0, 1))
    ax.set(xlabel="S: accuracy on seen classes", ylabel="U: accuracy on unseen classes",
           xlim=(0, min(1.0, 1.08 * top_s + 0.02)), ylim=(0, min(1.0, 1.08 * top_u + 0.02)), title=title)
    ax.legend(loc="best", title="○: operating point (chosen γ)", title_fontsize="small", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_f1_at_k(curves: dict[str, dict[int, dict[str, float]]], path: Path, title: str) -> Path:
    """P, R and F1 at each k of each setting (``{"zsl": {k: {"P@k": ..}}}``) as one PNG."""
    fig = _figure((5, 4))
    ax = fig.subplots()
    for setting, curve in curves.items():
        ks = sorted(curve)
        for metric, style in (("P", "--"), ("R", ":"), ("F1", "-")):
            ax.plot(ks, [curve[k][f"{metric}@{k}"] for k in ks], style, label=f"{setting} {metric}@k")
    ax.set(xlabel="k (tags predicted per image)", ylim=(0, 1), title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_worst_classes(panels: list[tuple[str, list[dict[str, Any]]]], path: Path, worst: int) -> Path:
    """One panel per (title, per-class rows worst first, as ``evaluate`` writes ``per_class.json``): the
    ``worst`` classes' accuracy as bars, each labelled with what the class is mistaken for."""
    fig = _figure((8, 0.35 * worst * len(panels) + 1.2 * len(panels)))
    for ax, (title, classes) in zip(np.atleast_1d(fig.subplots(len(panels), 1)), panels):
        rows = classes[:worst][::-1]  # the worst at the top
        ax.barh(range(len(rows)), [c["acc"] for c in rows], color="tab:blue", alpha=0.35)
        ax.set_yticks(range(len(rows)), [c["class"] for c in rows], fontsize="small")
        for y, c in enumerate(rows):  # written inside the axes, over the bar
            if c["mistaken_for"]:
                ax.text(0.01, y, f"mistaken for {c['mistaken_for']} ({c['mistaken_share']:.0%} of its images)",
                        va="center", fontsize="x-small")
        ax.set(xlim=(0, 1), title=f"{title}: worst unseen classes", xlabel="CZSL top-1 accuracy")
    return _save(fig, path, dpi=110)
