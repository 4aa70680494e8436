"""DVC stage ``evaluate``: metrics.json and plots/ for the trained model on the test splits."""
from stages import load_params, run, stage_paths  # first: Ctrl-C while torch loads is one line

# isort: split
import json
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.evaluate import evaluate_files, headline


def main() -> None:
    paths = stage_paths("model", "features", "semantics", "metrics", "plots")
    params = load_params("train", "evaluate")
    t, e = params["train"], params["evaluate"]
    metrics = evaluate_files(paths.model, paths.features, paths.semantics, paths.metrics, paths.plots,
                             Path(e["candidate_sets"]) if e["candidate_sets"] else None,
                             Path(t["clip_features"]) if t["clip_features"] else None, tuple(e["ks"]),
                             tuple(e["tag_ks"]))
    print(json.dumps(metrics, indent=2))
    print(headline(metrics))


if __name__ == "__main__":
    run(main)
