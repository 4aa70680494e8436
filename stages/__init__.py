"""Thin DVC stage entry points: each reads its section of params.yaml and calls into pipeline/."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.params import check_params

FEATURES = Path("features/image_features.h5")
SEMANTICS = Path("features/semantics.h5")
MODEL = Path("models/model.pt")
METRICS = Path("metrics.json")
PLOTS = Path("plots")


def load_params(*sections: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml (DVC's parameter file) with the ``sections`` a stage reads checked; a bad one ends the
    stage with one line naming every problem."""
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
        return check_params(params, sections, str(path))
    except (OSError, yaml.YAMLError) as e:
        sys.exit(f"error: {path}: cannot read the parameters ({str(e).splitlines()[0]})")
    except PipelineError as e:
        sys.exit(f"error: {e}")
