"""Make torchvision importable beside a torch build its compiled ops were not made for.

PyPI's torchvision wheel is a CUDA build; next to the CPU-only torch wheel its extension
library ``torchvision/_C.so`` fails to load, and ``import torchvision`` then dies with
``operator torchvision::nms does not exist`` while registering fake kernels. The image models
we use need none of those compiled ops, so when the extension cannot load we declare the two
op schemas torchvision registers unconditionally. Where the extension loads (a matching
build), it is loaded as torchvision itself would and nothing else happens.
``pipeline/__init__.py`` runs this module the first time anything imports torchvision (or
open_clip or timm, which import it).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # torchvision not installed: nothing to patch
    for lib in Path(spec.origin).parent.glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError):
            return False
        return True
    return False


def register_torchvision_ops() -> None:
    """Declare torchvision's op schemas if its compiled extension cannot be loaded (idempotent)."""
    global _library
    if _library is not None or hasattr(torch.ops.torchvision, "nms") or _extension_loads():
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _OP_SCHEMAS:
        _library.define(schema)


register_torchvision_ops()
