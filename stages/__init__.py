"""Thin DVC stage entry points: each reads its section of params.yaml and calls into pipeline/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """The parsed params.yaml (DVC's parameter file)."""
    with open(path) as f:
        return yaml.safe_load(f)
