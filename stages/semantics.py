"""DVC stage ``semantics``: class semantics for the classes of the extracted feature file."""
import sys

import pipeline  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.semantics.build import SemanticsConfig, build_semantics
from stages import FEATURES, SEMANTICS, load_params


def main() -> None:
    params = load_params("data", "semantics")
    settings = dict(params["semantics"])
    settings["text"] = tuple(settings.get("text") or ())
    try:
        built = build_semantics(FEATURES, SEMANTICS, SemanticsConfig(data_root=params["data"]["root"], **settings))
    except PipelineError as e:
        sys.exit(f"error: {e}")
    print(f"{SEMANTICS}: built {', '.join(built) or 'nothing (all parts up to date)'}")


if __name__ == "__main__":
    main()
