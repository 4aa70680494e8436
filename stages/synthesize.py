"""DVC stage ``synthesize``: draw the built-in synthetic dataset into ``data.root``."""
from stages import load_params, run  # first: Ctrl-C while torch loads is one line

# isort: split
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.datasets.synthetic import generate_synthetic


def main() -> None:
    params = load_params("data", "synthetic")
    generate_synthetic(Path(params["data"]["root"]), **params["synthetic"])


if __name__ == "__main__":
    run(main)
