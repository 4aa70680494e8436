"""DVC stage ``synthesize``: draw the built-in synthetic dataset into ``data.root``."""
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.datasets.synthetic import generate_synthetic
from stages import load_params


def main() -> None:
    params = load_params("data", "synthetic")
    generate_synthetic(Path(params["data"]["root"]), **params["synthetic"])


if __name__ == "__main__":
    main()
