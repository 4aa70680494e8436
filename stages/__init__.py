"""Thin DVC stage entry points: each takes the paths it reads and writes from its ``cmd`` in dvc.yaml
(every path a stage touches is visible there), reads its sections of params.yaml and calls into
pipeline/."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.params import check_params


def stage_paths(*names: str) -> argparse.Namespace:
    """The stage's ``--name PATH`` arguments (all required), as Paths."""
    parser = argparse.ArgumentParser()
    for name in names:
        parser.add_argument(f"--{name}", type=Path, required=True)
    return parser.parse_args()


def load_params(*sections: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml (DVC's parameter file) with the ``sections`` a stage reads checked; a bad one ends the
    stage with one line naming every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f)
        return check_params(params, sections, str(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        sys.exit(f"error: {path}: cannot read the parameters ({str(e).splitlines()[0]})")
    except PipelineError as e:
        sys.exit(f"error: {e}")
