"""The torch device a user names: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ..."""
from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"device {name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} asked for but CUDA is not available here; set device: auto or cpu")
    return device
