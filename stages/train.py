"""DVC stage ``train``: fit ``model`` (hyperparameters from its params section) on cached features."""
import sys
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.inputs import load_inputs
from pipeline.train import TrainConfig, describe_checkpoint, save_checkpoint, train
from stages import FEATURES, MODEL, SEMANTICS, load_params


def main() -> None:
    params = load_params("train")
    model, t = params["model"], params["train"]
    extra = {"clip": Path(t["clip_features"])} if t.get("clip_features") else None
    cfg = TrainConfig(model=model, semantics=t["semantics"], seed=t["seed"], select=t["select"],
                      val_fraction=t["val_fraction"], hparams=params.get(model) or {}, val_folds=t.get("val_folds"))
    try:
        checkpoint = train(load_inputs(FEATURES, SEMANTICS, cfg.semantics, extra), cfg)
    except PipelineError as e:
        sys.exit(f"error: {e}")
    save_checkpoint(checkpoint, MODEL)
    print(f"{MODEL}: {describe_checkpoint(checkpoint)}")


if __name__ == "__main__":
    main()
