"""DVC stage ``semantics``: class semantics for the classes of the extracted feature file."""
import sys
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.semantics.build import SemanticsConfig, build_semantics
from stages import load_params
from stages.extract import OUTPUT as FEATURES

OUTPUT = Path("features/semantics.h5")


def main() -> None:
    params = load_params()
    settings = dict(params["semantics"])
    settings["text"] = tuple(settings.get("text") or ())
    try:
        built = build_semantics(FEATURES, OUTPUT, SemanticsConfig(data_root=params["data"]["root"], **settings))
    except PipelineError as e:
        sys.exit(f"error: {e}")
    print(f"{OUTPUT}: built {', '.join(built) or 'nothing (all parts up to date)'}")


if __name__ == "__main__":
    main()
