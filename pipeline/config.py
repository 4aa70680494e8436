"""The settings of extraction, training and evaluation and their defaults, written once: the command line
(``zsl extract``, ``train``, ``evaluate``), the Python API (``pipeline.api``) and the DVC stages
(``params.yaml``'s ``extract:``, ``train:`` and ``evaluate:``, checked equal by a test) read them from
:class:`ExtractConfig`, :class:`TrainSettings` and :class:`EvaluateConfig`. No torch here, so ``--help``
stays instant."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExtractConfig:
    """How ``extract`` runs: the backbone (:func:`pipeline.backbones.load_backbone`'s arguments) and the
    extraction options (:func:`pipeline.extract.extract`'s)."""

    backbone: str = "efficientnet_lite0"  # one name: built-in, clip:<open_clip architecture> or timm:<model>
    pretrained: str = "imagenet"  # a weights tag, a local file, or none (random weights)
    image_size: int | None = None  # crop size; None: 224 (CLIP and timm: the model's own)
    grid: bool = True  # also the last stage's spatial features (attention models)
    mid_grid: bool | None = None  # also an earlier stage's (grid_mid, DRMN's fusion); None: as grid
    dtype: str = "float16"
    batch_size: int | None = None  # None: per device (extract.batch_size_for): CPU 32 at 224 px, GPU 64
    workers: int = 2  # image decoding threads on the CPU, processes on CUDA
    device: str = "auto"
    max_failures: float = 0.01  # unreadable images allowed: a fraction below 1, else a count
    merge: bool = False  # under torchrun: one self-contained store instead of virtual data sets over shards

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pipeline.extract.extract` (``mid_grid`` None resolved to ``grid``)."""
        return {"dtype": self.dtype, "grid": self.grid, "mid_grid": self.grid if self.mid_grid is None else self.mid_grid,
                "batch_size": self.batch_size, "workers": self.workers, "device": self.device,
                "max_failures": self.max_failures}


EXTRACT = ExtractConfig()  # the defaults


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How ``train`` runs, whatever the model (:class:`pipeline.selection.TrainConfig` adds the model and
    its fixed hyperparameters)."""

    semantics: str = "attributes"  # the class semantics read: attributes | text:<encoder> (--source, train.source)
    seed: int = 0
    select: bool = True  # grid search of the model's searched hyperparameters on validation
    val_fraction: float = 0.2  # validation classes carved from trainval when the dataset has no train/val
    val_folds: int | None = None  # validation draws averaged by selection; None: the model's selection_folds
    device: str = "auto"  # where a network trains: auto | cpu | cuda[:N] (not a hyperparameter)


TRAIN = TrainSettings()  # the defaults


@dataclass(frozen=True)
class EvaluateConfig:
    """How ``evaluate`` scores (:func:`pipeline.evaluate.evaluate_files`'s options)."""

    candidate_sets: str | None = None  # JSON {set: [class, ...]} (imagenet-testsets.json): Hit@k per set
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)  # Hit@k
    tag_ks: tuple[int, ...] = (3, 5)  # multi-label data: P / R / F1 at k


EVALUATE = EvaluateConfig()  # the defaults
