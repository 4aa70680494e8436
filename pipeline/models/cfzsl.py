"""CFZSL: CNN and frozen-CLIP image features fused in a joint space with attribute + CLIP-text semantics."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split
from pipeline.models.layers import Standardize, log_scale, mlp
from pipeline.models.torch_model import TorchZSLModel, train_epochs
from pipeline.norms import l2_normalize

NEED_CLIP_FEATURES = ("CFZSL needs CLIP image features of the same images: set train.clip_features to a feature "
                      "file extracted with --backbone clip")
NEED_CLIP_TEXT = ("CFZSL needs CLIP text embeddings of the class names: add clip to semantics.text "
                  "(params.yaml) and rerun the semantics stage")


def clip_features(data: Split) -> np.ndarray:
    """``data.extra["clip"]``, checked: present, one row per image."""
    if "clip" not in data.extra:
        raise PipelineError(NEED_CLIP_FEATURES)
    clip = data.extra["clip"]
    if clip.ndim != 2 or len(clip) != len(data.features):
        raise PipelineError(f"CFZSL: CLIP features {clip.shape} do not match the {len(data.features)} images; "
                            "extract them from the same dataset and split")
    return clip


def semantic_inputs(semantics: Semantics) -> np.ndarray:
    """[C, S + T]: L2-normalised ``semantics.vectors`` beside L2-normalised ``semantics.text["clip"]``."""
    if "clip" not in semantics.text:
        raise PipelineError(NEED_CLIP_TEXT)
    text = semantics.text["clip"]
    if len(text) != len(semantics.vectors):
        raise PipelineError(f"CFZSL: {len(text)} CLIP text rows but {len(semantics.vectors)} classes; rebuild "
                            "the semantics file")
    return np.hstack([l2_normalize(semantics.vectors), l2_normalize(text)])


class _FusionNet(nn.Module):
    def __init__(self, cnn_dim: int, clip_dim: int, semantic_dim: int, h: dict[str, Any]):
        super().__init__()
        self.cnn_standardize, self.clip_standardize = Standardize(cnn_dim), Standardize(clip_dim)
        self.cnn = mlp(cnn_dim, h["hidden"], h["joint_dim"], h["dropout"])
        self.clip = mlp(clip_dim, h["hidden"], h["joint_dim"], h["dropout"])
        self.semantic = mlp(semantic_dim, h["semantic_hidden"], h["joint_dim"], h["semantic_dropout"])
        self.log_scale = nn.Parameter(torch.tensor(log_scale(h["temperature"])), requires_grad=False)

    def images(self, cnn: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        fused = (F.normalize(self.cnn(self.cnn_standardize(cnn)), dim=-1)
                 + F.normalize(self.clip(self.clip_standardize(clip)), dim=-1))
        return F.normalize(fused, dim=-1)

    def classes(self, semantic: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.semantic(semantic), dim=-1)


class CFZSL(TorchZSLModel[_FusionNet]):
    """Two image branches fused by summing their unit-norm outputs, one semantic branch; score = cosine.

    * CNN branch: standardised ``features`` (training mean/std) -> MLP -> ``joint_dim``, L2-normalised.
    * CLIP branch: standardised ``extra["clip"]`` (cached features of a frozen CLIP image encoder) ->
      MLP -> ``joint_dim``, L2-normalised. Image embedding = normalise(cnn + clip): each branch weighs
      equally whatever its feature scale.
    * Semantic branch: [normalise(attributes) | normalise(CLIP text)] -> MLP -> ``joint_dim``, normalised.

    Loss per mini-batch: cross-entropy over the seen classes on ``cos / temperature`` plus
    ``triplet_weight`` × mean ``relu(margin − cos(x, c_y) + max_{k≠y} cos(x, c_k))`` (the hardest other
    seen class as negative).
    """

    name = "cfzsl"
    defaults = {
        "epochs": 20, "lr": 1e-3, "batch_size": 256, "weight_decay": 1e-4,
        "joint_dim": 256, "hidden": 512, "semantic_hidden": 512, "dropout": 0.2, "semantic_dropout": 0.1,
        "temperature": 0.05, "margin": 0.2, "triplet_weight": 1.0,
    }
    search_space = {"temperature": [0.05, 0.1], "triplet_weight": [0.5, 2.0]}

    def input_sizes(self, train: Split, semantics: Semantics) -> list[int]:
        return [train.features.shape[1], clip_features(train).shape[1], semantic_inputs(semantics).shape[1]]

    def build(self, sizes: list[int]) -> _FusionNet:
        return _FusionNet(sizes[0], sizes[1], sizes[2], self.hparams)

    def train_net(self, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                  generator: torch.Generator) -> list[float]:
        net = self.trained()
        h = self.hparams
        cnn, clip = self.tensor(train.features), self.tensor(clip_features(train))
        net.cnn_standardize.set_from(cnn)
        net.clip_standardize.set_from(clip)
        semantic = self.tensor(semantic_inputs(semantics)[seen])
        y = torch.as_tensor(positions, device=self.device)

        def step(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(self.device)
            similarity = net.images(cnn[rows], clip[rows]) @ net.classes(semantic).T  # unit vectors: cosine
            labels = y[rows]
            loss = F.cross_entropy(net.log_scale.exp() * similarity, labels)
            if h["triplet_weight"] > 0 and len(seen) > 1:
                positive = similarity.gather(1, labels[:, None]).squeeze(1)
                negative = similarity.scatter(1, labels[:, None], -torch.inf).amax(dim=1)
                loss = loss + h["triplet_weight"] * F.relu(h["margin"] - positive + negative).mean()
            return loss

        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=h["lr"],
                                      weight_decay=h["weight_decay"])
        return train_epochs(optimizer, len(y), step, epochs=h["epochs"], batch_size=h["batch_size"],
                            generator=generator, name=self.name)

    def image_embeddings(self, data: Split) -> np.ndarray:
        net = self.trained()
        clip = clip_features(data)
        if data.features.shape[1] != self.sizes[0] or clip.shape[1] != self.sizes[1]:
            raise PipelineError(f"cfzsl: features are {data.features.shape[1]}-d + CLIP {clip.shape[1]}-d but the "
                                f"model was fitted on {self.sizes[0]}-d + {self.sizes[1]}-d")
        return self.embed_rows(net.images, data.features, clip)

    def class_embeddings(self, semantics: Semantics) -> np.ndarray:
        net = self.trained()
        inputs = semantic_inputs(semantics)
        if inputs.shape[1] != self.sizes[2]:
            raise PipelineError(f"cfzsl: attributes + CLIP text are {inputs.shape[1]}-d but the model was fitted on "
                                f"{self.sizes[2]}-d")
        return self.embed_rows(net.classes, inputs)

