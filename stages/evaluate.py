"""DVC stage ``evaluate``: metrics.json and plots/ for the trained model on the test splits."""
import json
import sys
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_files, headline
from stages import FEATURES, METRICS, MODEL, PLOTS, SEMANTICS, load_params


def main() -> None:
    params = load_params("train", "evaluate")
    t, e = params["train"], params["evaluate"]
    try:
        metrics = evaluate_files(MODEL, FEATURES, SEMANTICS, METRICS, PLOTS,
                                 Path(e["candidate_sets"]) if e["candidate_sets"] else None,
                                 Path(t["clip_features"]) if t["clip_features"] else None, tuple(e["ks"]),
                                 tuple(e["tag_ks"]))
    except PipelineError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(metrics, indent=2))
    print(headline(metrics))


if __name__ == "__main__":
    main()
