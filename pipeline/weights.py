"""Network weights as every backbone family reads them: what a ``pretrained`` value names (a tag, a local
file, or none), seeded random initialisation, and state dicts read with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import PipelineError


def seeded_init(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network under a fixed seed, so ``pretrained=none`` gives the same weights every run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build()


def _warn_random(name: str) -> None:
    warnings.warn(f"{name}: pretrained=none, using RANDOM weights; features will not be meaningful for recognition",
                  stacklevel=3)


def resolve_weights(name: str, pretrained: str, tags: Sequence[str], option: str = "--pretrained") -> tuple[str, str]:
    """What ``pretrained`` names for backbone ``name``, the same for every family: ``("none", "")`` (random
    weights, with a warning), ``("file", path)`` (a local checkpoint) or ``("tag", tag)`` (one of ``tags``,
    which the family downloads or ships); anything else is a one-line error listing the tags (``option``:
    the user's name for the setting)."""
    if pretrained == "none":
        _warn_random(name)
        return "none", ""
    if Path(pretrained).is_file():
        return "file", pretrained
    if pretrained in tags:
        return "tag", pretrained
    shown = ", ".join(list(tags)[:8]) + (", ..." if len(tags) > 8 else "")
    raise PipelineError(f"{name}: {option} {pretrained!r} is not a file nor a known tag ({shown}); use a tag, a "
                        "local checkpoint file, or none")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.pt``/``.pth`` file (bare, or under ``state_dict``/``model``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise PipelineError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict):
        raise PipelineError(f"{path}: expected a state dict, found {type(ckpt).__name__}")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def load_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise PipelineError(f"{source}: checkpoint does not fit the architecture ({first})") from e
