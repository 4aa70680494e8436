"""CLIP zero-shot baseline: cosine between CLIP image embeddings and prompt-ensembled class-name embeddings."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split, ZSLModel
from pipeline.norms import l2_normalize

log = logging.getLogger(__name__)
NEED_TEXT = ("clip_prompt needs CLIP text embeddings of the class names: add clip to semantics.text (params.yaml) "
             "and rerun the semantics stage")


def clip_images(data: Split) -> np.ndarray:
    """The CLIP image embeddings of ``data``: ``extra["clip"]`` when present, else ``features`` (which then
    must come from ``--backbone clip``: its pooled features are CLIP's image embeddings)."""
    return data.extra["clip"] if "clip" in data.extra else data.features


class CLIPPrompt(ZSLModel):
    """No training: image embeddings = L2-normalised CLIP image embeddings (``extra["clip"]`` if present,
    else ``features``, which must then be extracted with the CLIP backbone), class embeddings = the
    unit-norm, prompt-ensembled ``semantics.text["clip"]``; the score is their cosine.

    ``fit`` only checks the inputs. The image and text encoders must be the same CLIP model (``semantics``
    takes the feature store's unless ``semantics.clip_model`` says otherwise); a dimension mismatch is an
    error, an equal dimension cannot be told apart (a 512-d ResNet-18 feature passes), so non-negative
    features (ReLU CNN features; CLIP embeddings have negative entries) are warned about.
    """

    name = "clip_prompt"
    defaults: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}

    def fit(self, train: Split, seen: np.ndarray, semantics: Semantics, seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        self._check(clip_images(train), "extra['clip']" if "clip" in train.extra else "features", semantics)
        return {"loss": [], "seconds": time.perf_counter() - start}

    def _check(self, images: np.ndarray, source: str, semantics: Semantics) -> None:
        text = self._text(semantics)
        if images.ndim != 2 or images.shape[1] != text.shape[1]:
            dims = "x".join(map(str, images.shape[1:]))
            raise PipelineError(
                f"clip_prompt: image {source} are {dims}-d but CLIP text embeddings {text.shape[1]}-d: "
                "extract features with --backbone clip:ARCH (the model of semantics.clip_model), or set "
                "train.clip_features to such a file")
        if len(images) and (images[: min(len(images), 256)] >= 0).all():
            log.warning("clip_prompt: image %s are all non-negative, like CNN (ReLU) features, not CLIP embeddings; "
                        "extract them with --backbone clip", source)

    @staticmethod
    def _text(semantics: Semantics) -> np.ndarray:
        if "clip" not in semantics.text:
            raise PipelineError(NEED_TEXT)
        return semantics.text["clip"]

    def image_embeddings(self, data: Split) -> np.ndarray:
        images = clip_images(data)
        return l2_normalize(images)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        return l2_normalize(self._text(semantics))
