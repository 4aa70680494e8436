"""Zero-shot models, by name: ``make_model("eszsl", gamma=10.0)``.

=================  ====================================================================
``eszsl``          ESZSL, closed-form bilinear map (:mod:`pipeline.models.eszsl`)
``joint_gcn``      image MLP + class GCN in a joint space (:mod:`pipeline.models.gcn`)
``gcn_regression`` GCN regressing linear classifiers, GCNZ / DGP style (:mod:`pipeline.models.gcn`)
``cfzsl``          CNN + CLIP image features fused, attributes + CLIP text (:mod:`pipeline.models.cfzsl`)
``clip_prompt``    CLIP zero-shot with prompt-ensembled class names, no training
``conse``          ConSE: seen-class probabilities mix seen class vectors, no training (:mod:`pipeline.models.conse`)
``drmn``           DRMN: dual attention over grid regions + attribute transformer (:mod:`pipeline.models.drmn`)
``msdn``           MSDN: attribute<->region attention sub-networks + mutual distillation (:mod:`pipeline.models.msdn`)
``sdl``            SDL: multi-label tagging with K principal vectors per image (:mod:`pipeline.models.sdl`)
=================  ====================================================================
"""
from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError
from pipeline.models.base import ZSLModel
from pipeline.models.cfzsl import CFZSL
from pipeline.models.clip_prompt import CLIPPrompt
from pipeline.models.conse import ConSE
from pipeline.models.drmn import DRMN
from pipeline.models.eszsl import ESZSL
from pipeline.models.gcn import GCNRegression, JointGCN
from pipeline.models.msdn import MSDN
from pipeline.models.sdl import SDL

MODELS: dict[str, type[ZSLModel]] = {
    m.name: m for m in (ESZSL, JointGCN, GCNRegression, CFZSL, CLIPPrompt, ConSE, MSDN, DRMN, SDL)
}


def make_model(name: str, **hparams: Any) -> ZSLModel:
    """A new, untrained model ``name`` with ``hparams`` over its defaults."""
    if name not in MODELS:
        raise PipelineError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**hparams)
