"""DVC stage ``synthesize``: draw the built-in synthetic dataset into ``data.root``."""
from stages import load_params, run  # first: Ctrl-C while torch loads is one line

# isort: split
import sys
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.datasets.synthetic import generate_synthetic
from pipeline.errors import PipelineError


def main() -> None:
    params = load_params("data", "synthetic")
    try:
        generate_synthetic(Path(params["data"]["root"]), **params["synthetic"])
    except PipelineError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    run(main)
