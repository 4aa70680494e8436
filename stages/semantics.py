"""DVC stage ``semantics``: class semantics for the classes of the extracted feature file."""
from stages import load_params, run, stage_paths  # first: Ctrl-C while torch loads is one line

# isort: split

import pipeline  # noqa: F401
from pipeline.semantics.build import SemanticsConfig, build_semantics


def main() -> None:
    paths = stage_paths("features", "output")
    params = load_params("data", "semantics")
    settings = dict(params["semantics"])
    settings["text"] = tuple(settings.get("text") or ())
    cfg = SemanticsConfig(data_root=params["data"]["root"], **settings)
    built = build_semantics(paths.features, paths.output, cfg)
    print(f"{paths.output}: built {', '.join(built) or 'nothing (all parts up to date)'}")


if __name__ == "__main__":
    run(main)
