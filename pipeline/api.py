"""The library in six calls, for notebooks and scripts: the steps of ``dvc repro`` and ``zsl``, each taking
paths and returning an object with named fields::

    from pipeline.api import extract, semantics, train, evaluate, predict, load_model

(``pipeline.extract``, ``pipeline.train`` ... are the modules behind them; these calls are the stable way in.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.config import EVALUATE, TRAIN, ExtractConfig
from pipeline.distributed import extract_dataset
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_files, headline
from pipeline.extract import ExtractResult
from pipeline.models.base import ZSLModel
from pipeline.predict import Predictions, predict
from pipeline.selection import TrainConfig
from pipeline.semantics.build import SemanticsConfig, build_semantics
from pipeline.store import FeatureStore
from pipeline.train import load_checkpoint, train_files

__all__ = [
    "Evaluation",
    "ExtractResult",
    "FeatureStore",
    "Predictions",
    "TrainedModel",
    "evaluate",
    "extract",
    "load_model",
    "predict",
    "semantics",
    "train",
]


def extract(dataset: str, root: str | Path, output: str | Path, *, splits: str | Path | None = None,
            overwrite: bool = False, **settings: Any) -> ExtractResult:
    """``zsl extract``: features of every image of ``dataset`` at ``root`` into ``output`` (resumable; an
    existing complete store with the same settings is reused). ``settings`` are :class:`ExtractConfig`
    fields (``backbone``, ``pretrained``, ``image_size``, ``grid``, ``batch_size``, ...), with its
    defaults, the command line's and params.yaml's."""
    unknown = sorted(set(settings) - {f.name for f in fields(ExtractConfig)})
    if unknown:
        raise PipelineError(f"extract: unknown settings {unknown}; use ExtractConfig's fields: "
                            f"{', '.join(f.name for f in fields(ExtractConfig))}")
    return extract_dataset(dataset, Path(root), Path(splits) if splits else None, Path(output),
                           ExtractConfig(**settings), overwrite)


def semantics(features: str | Path, output: str | Path, **settings: Any) -> list[str]:
    """``zsl semantics``: class semantics for the classes of ``features``; ``settings`` are
    :class:`SemanticsConfig` fields (``attributes``, ``text``, ``graph``, ...). Returns the parts built
    (unchanged parts are reused)."""
    if "text" in settings:
        settings["text"] = tuple(settings["text"])
    return build_semantics(Path(features), Path(output), SemanticsConfig(**settings))


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and what its checkpoint says about it."""

    model: ZSLModel
    name: str
    hparams: dict[str, Any]
    classes: list[str]  # every class of its feature store, in store order
    seen: list[str]  # the classes it was trained on
    gamma: float  # calibrated stacking, chosen on validation
    validation: dict[str, Any]  # the selection's scores and table
    checkpoint: dict[str, Any]


def load_model(path: str | Path) -> TrainedModel:
    """A checkpoint written by :func:`train` (read safely: tensors and plain types only)."""
    model, checkpoint = load_checkpoint(Path(path))
    classes = list(checkpoint["classes"])
    return TrainedModel(model, checkpoint["model"], dict(checkpoint["hparams"]), classes,
                        [classes[c] for c in checkpoint["seen"]], float(checkpoint.get("gamma", 0.0)),
                        dict(checkpoint["validation"]), checkpoint)


def train(features: str | Path, semantics: str | Path, output: str | Path, *, model: str = "joint_gcn",
          source: str = TRAIN.semantics, hparams: dict[str, Any] | None = None, seed: int = TRAIN.seed,
          select: bool = TRAIN.select, val_fraction: float = TRAIN.val_fraction, val_folds: int | None = TRAIN.val_folds,
          device: str = TRAIN.device) -> TrainedModel:
    """``zsl train``: select on validation, refit on trainval, save to ``output``."""
    cfg = TrainConfig(model=model, semantics=source, seed=seed, select=select, val_fraction=val_fraction,
                      hparams=dict(hparams or {}), val_folds=val_folds, device=device)
    train_files(Path(features), Path(semantics), cfg, Path(output))
    return load_model(output)


@dataclass(frozen=True)
class Evaluation:
    """The metrics ``zsl evaluate`` writes. ``czsl``: accuracy and Hit@k among the unseen classes;
    ``gzsl``: U, S, H at the chosen γ (multi-label data: tag mAP and P/R/F1@k); ``zsl``: multi-label only;
    ``ausuc``: the area under the seen-unseen curve (single-label); ``run``: what produced them;
    ``metrics``: the whole JSON."""

    model: str
    run: dict[str, Any]
    czsl: dict[str, Any] | None
    zsl: dict[str, Any] | None
    gzsl: dict[str, Any] | None
    ausuc: float | None
    metrics: dict[str, Any]

    @property
    def headline(self) -> str:
        """``joint_gcn: CZSL 0.906 · GZSL H 0.634 (U 0.729, S 0.561) · AUSUC 0.587``."""
        return headline(self.metrics)


def evaluate(model_file: str | Path, features: str | Path, semantics: str | Path, *,
             metrics: str | Path = "metrics.json", plots: str | Path = "plots",
             candidate_sets: str | Path | None = EVALUATE.candidate_sets, ks: Sequence[int] = EVALUATE.ks,
             tag_ks: Sequence[int] = EVALUATE.tag_ks) -> Evaluation:
    """``zsl evaluate``: metrics of a trained model on the test splits (written to ``metrics`` and ``plots``)."""
    m = evaluate_files(Path(model_file), Path(features), Path(semantics), Path(metrics), Path(plots),
                       Path(candidate_sets) if candidate_sets else None, None, tuple(ks), tuple(tag_ks))
    return Evaluation(m["model"], m["run"], m.get("czsl"), m.get("zsl"), m.get("gzsl"), m.get("ausuc"), m)
