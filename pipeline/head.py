"""A backbone's own classifier, as the store records it and the models read it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Head:
    """A backbone's own classifier on its pooled features: ``logits = features @ weight.T + bias``.

    ``classes`` names what each of the K outputs means (wnids for ImageNet-1K weights, in the
    ILSVRC-2012 order, i.e. sorted wnids).
    """

    weight: np.ndarray  # [K, D] float32
    bias: np.ndarray  # [K] float32
    classes: list[str]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """[N, K] float32 logits of pooled features [N, D]."""
        return np.asarray(features, np.float32) @ self.weight.T + self.bias

    def rows_of(self, classes: list[str]) -> np.ndarray:
        """[C] the head output of each of ``classes`` (-1 where the head has none)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(c, -1) for c in classes], dtype=np.int64)
