"""Model selection shared by single- and multi-label training: the configuration, the grid's
combinations, and choosing the best mean validation score over folds."""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import TrainSettings
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.models import MODELS, make_model
from pipeline.models.base import Semantics, Split, ZSLModel, seed_everything


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainSettings):
    """How to train ``model``: the run's settings (:class:`~pipeline.config.TrainSettings`, their defaults)
    and ``hparams``, fixed (not searched); ``select`` turns the grid search off."""

    model: str
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "device" in self.hparams:
            raise PipelineError(f"{self.model}: device is not a hyperparameter; use --device (train.device)")
        resolve_device(self.device)  # a device that is no torch device, or absent, fails before any data is read
        make_model(self.model, **self.hparams)  # an unknown model or hyperparameter fails before any data is read

    @property
    def model_class(self) -> type[ZSLModel]:
        """The model's class, looked up once per run (the name is checked when the config is made)."""
        return MODELS[self.model]

    def folds(self) -> int:
        """How many validation folds selection averages (``val_folds`` or the model's default)."""
        folds = self.model_class.selection_folds if self.val_folds is None else self.val_folds
        if folds < 1:
            raise PipelineError(f"val_folds must be >= 1, got {folds}")
        return folds if self.select else 1


def combinations(cls: type[ZSLModel], fixed: dict[str, Any], select: bool) -> list[dict[str, Any]]:
    """Every combination of the model's search space (``fixed`` hyperparameters left out of it), its inference
    hyperparameters varying fastest: the combinations that share a fit follow each other."""
    grid = {k: v for k, v in cls.search_space.items() if k not in fixed} if select else {}
    keys = sorted(grid, key=lambda k: (k in cls.inference_hparams, k))
    return [{**fixed, **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]


def choose(cfg: TrainConfig, folds: int, fit_and_score: Callable[[dict[str, Any], int], tuple[float, ZSLModel]],
           score: str) -> tuple[float, dict[str, Any], ZSLModel, list[dict[str, Any]]]:
    """Fit every combination of the grid on each fold; the best mean ``score`` wins (first one on ties).

    Returns that mean, the combination, its model fitted on fold 0, and the table of every combination
    (``score``: the mean, ``folds``: one score per fold).
    """
    table = []
    best: tuple[float, dict[str, Any], ZSLModel] | None = None
    for hparams in combinations(cfg.model_class, cfg.hparams, cfg.select):
        per_fold, first = [], None
        for fold in range(folds):
            seed_everything(cfg.seed)
            value, model = fit_and_score(hparams, fold)
            per_fold.append(value)
            first = model if fold == 0 else first
        mean = float(np.mean(per_fold))
        table.append({"hparams": hparams, score: mean, "folds": per_fold})
        if best is None or mean > best[0]:
            assert first is not None
            best = (mean, hparams, first)
    assert best is not None
    return (*best, table)


def refit(cfg: TrainConfig, hparams: dict[str, Any], trainval: Split, seen: np.ndarray,
          semantics: Semantics) -> tuple[ZSLModel, dict[str, Any], float]:
    """The chosen ``hparams`` fitted on all of ``trainval`` from ``cfg.seed``: (model, fit log, seconds)."""
    seed_everything(cfg.seed)
    final = cfg.model_class(**hparams, device=cfg.device)
    start = time.perf_counter()
    fit_log = final.fit(trainval, seen, semantics, cfg.seed)
    return final, fit_log, time.perf_counter() - start


def untimed(fit_log: dict[str, Any]) -> dict[str, Any]:
    """A fit log without its wall-clock time (logged instead): the same inputs then give the same
    checkpoint bytes, so DVC does not see a new model on every identical rerun."""
    return {k: v for k, v in fit_log.items() if k != "seconds"}
