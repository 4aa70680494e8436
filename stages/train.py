"""DVC stage ``train``: fit ``model`` (hyperparameters from its params section) on cached features."""
from stages import load_params, run, stage_paths  # first: Ctrl-C while torch loads is one line

# isort: split
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.train import TrainConfig, describe_checkpoint, train_files


def main() -> None:
    paths = stage_paths("features", "semantics", "output")
    params = load_params("model", "train")
    model, t = params["model"], params["train"]
    cfg = TrainConfig(model=model, semantics=t["source"], seed=t["seed"], select=t["select"],
                      val_fraction=t["val_fraction"], hparams=params.get(model) or {}, val_folds=t["val_folds"],
                      device=t["device"])
    checkpoint = train_files(paths.features, paths.semantics, cfg, paths.output,
                             Path(t["clip_features"]) if t["clip_features"] else None)
    print(f"{paths.output}: {describe_checkpoint(checkpoint)}")


if __name__ == "__main__":
    run(main)
