"""DVC stage ``evaluate``: metrics.json and plots/ for the trained model on the test splits."""
import json
import sys
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate, read_candidate_sets, write_metrics
from pipeline.inputs import load_inputs
from pipeline.train import load_checkpoint
from stages import FEATURES, METRICS, MODEL, PLOTS, SEMANTICS, load_params


def main() -> None:
    params = load_params("train", "evaluate")
    t, e = params["train"], params["evaluate"]
    extra = {"clip": Path(t["clip_features"])} if t.get("clip_features") else None
    try:
        model, checkpoint = load_checkpoint(MODEL)
        inputs = load_inputs(FEATURES, SEMANTICS, checkpoint["config"]["semantics"], extra)
        sets = read_candidate_sets(Path(e["candidate_sets"]), inputs.classes) if e.get("candidate_sets") else None
        metrics = evaluate(model, checkpoint, inputs, PLOTS, sets, tuple(e["ks"]), tuple(e["tag_ks"]))
        write_metrics(metrics, METRICS)
    except PipelineError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
