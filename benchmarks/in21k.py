"""ImageNet-21K at its real class scale: DGP's split and test sets over the IN200 photos, through the CLI.

Protocol (GCNZ / DGP, ``../shared/data/imagenet/``, the files as DGP ships them): the 21,842 classes of
``imagenet-split.json`` (1000 ILSVRC-2012 training classes, 20,842 test classes), the WordNet graph they
induce, and Hit@k among the candidate sets of ``imagenet-testsets.json`` (2-hops 1,549, 3-hops 7,860,
all 20,842 classes), without and with the 1000 training classes among the candidates (DGP's "general"
setting, ``+train``). Images: the IN200 photos (``../shared/data/imagen200``) laid out as the
``imagenet`` dataset: the 150 ILSVRC classes' photos as training images (4 each; the 5th as test-seen),
the 50 other classes' photos (all among DGP's 20,842 test classes: 39 in 2-hops, 49 in 3-hops) as test
images. Every 1000 training class is seen: the backbone's classifier rows stand for those without photos.

Each step runs as a user runs it, one ``cli.py`` command each (start-up included in its time): extract
(default backbone), ``semantics`` per graph text encoder (class names with MiniLM and GloVe, the WordNet
graph with that encoder's node vectors), then per model ``train`` (selection on validation included) and
``evaluate --candidate-sets``. Wall seconds and peak memory (RSS of the command) of each.

    python benchmarks/in21k.py [--images ../shared/data/imagen200] [--imagenet ../shared/data/imagenet] \\
        [--work /tmp/in21k] [--models 'conse;eszsl;gcn_regression;joint_gcn'] [--text minilm,glove] [--glosses]

``--text`` lists graph node encoders (``minilm+glove``: both, concatenated); the models read the class-name
vectors of the first. ``--glosses``: MiniLM also reads each class's and node's WordNet definition.

Prints one JSON object per line: ``extract``, one ``semantics`` per encoder, then one per (model, encoder).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.in200 import IMAGES, add_semantics_options, in200_layout  # noqa: E402
from benchmarks.measure import MIB  # noqa: E402

IMAGENET = ROOT.parent / "shared" / "data" / "imagenet"
MODELS = ("conse", "eszsl", "gcn_regression", "joint_gcn")  # ``model:key=value,...`` fixes hyperparameters
SETS = ("2-hops", "3-hops", "all")  # the sets reported in the summary line (evaluate reports every set)


def run_cli(args: list[str]) -> dict[str, Any]:
    """Run ``cli.py ARGS`` and return its wall seconds and peak RSS (MiB, the command and its children,
    sampled every 50 ms); raises with its output when it fails."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a pipe left unread fills and blocks the command
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=log,
                                   stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        watched, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
            except psutil.Error:  # exited between listing and reading
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if process.returncode not in (0, 3):  # 3: finished with a few unreadable images
        raise RuntimeError(f"cli.py {' '.join(args)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_mib": round(peak / MIB), "log": output}


def model_spec(spec: str) -> tuple[str, str, list[str]]:
    """A ``--models`` item ``model[:key=value,...]`` as (model, a file-name stem, ``--hparam`` arguments)."""
    model, _, fixed = spec.partition(":")
    name = spec.replace(":", "_").replace(",", "_").replace("=", "")
    return model, name, [arg for item in fixed.split(",") if item for arg in ("--hparam", item)]


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Hit@1/2/5/10/20 of each reported set, zero-shot and general (``+train``: DGP's, uncalibrated;
    ``+train_calibrated``: the training classes' scores lowered by the validation γ, as GZSL)."""
    hits = metrics.get("hit@k", {})
    return {name: {k.removeprefix("hit@"): round(v, 4) for k, v in hits[name].items()}
            for s in SETS for name in (s, f"{s}+train", f"{s}+train_calibrated") if name in hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--imagenet", type=Path, default=IMAGENET, help="DGP's split and test-set files")
    parser.add_argument("--work", type=Path, default=Path("/tmp/in21k"))
    parser.add_argument("--models", default=";".join(MODELS), help="models to run, separated by ';'")
    add_semantics_options(parser)
    args = parser.parse_args()
    work = args.work.resolve()
    split = in200_layout(args.images.resolve(), work / "root", (args.imagenet / "imagenet-split.json").resolve())
    testsets = (args.imagenet / "imagenet-testsets.json").resolve()
    features = work / "in21k_lite0.h5"

    step = run_cli(["extract", "--dataset", "imagenet", "--root", str(work / "root"), "--splits", str(split),
                    "--no-grid", "--output", str(features)])
    print(json.dumps({"step": "extract", "seconds": step["seconds"], "peak_mib": step["peak_mib"]}), flush=True)
    glosses = ["--glosses"] if args.glosses else []
    for encoder in args.text.split(","):
        semantics = work / f"in21k_semantics_{encoder}{'_glosses' if args.glosses else ''}.h5"
        semantics.unlink(missing_ok=True)  # timed from scratch (a rebuild would copy every unchanged part)
        step = run_cli(["semantics", "--features", str(features), "--output", str(semantics), "--text", "minilm",
                        "--text", "glove", "--graph", "wordnet", "--graph-text", encoder, *glosses])
        print(json.dumps({"step": "semantics", "graph_text": encoder, "glosses": args.glosses,
                          "seconds": step["seconds"], "peak_mib": step["peak_mib"]}), flush=True)
        source = f"text:{encoder.split('+')[0]}"
        for spec in args.models.split(";"):
            model, name, hparams = model_spec(spec)
            checkpoint, metrics = work / f"{name}_{semantics.stem}.pt", work / f"{name}_{semantics.stem}.json"
            trained = run_cli(["train", "--model", model, "--features", str(features), "--semantics", str(semantics),
                               "--source", source, "--output", str(checkpoint), *hparams])
            evaluated = run_cli(["evaluate", "--model-file", str(checkpoint), "--features", str(features),
                                 "--semantics", str(semantics), "--candidate-sets", str(testsets),
                                 "--metrics", str(metrics),
                                 "--plots", str(work / "plots" / f"{name}_{semantics.stem}")])
            result = json.loads(metrics.read_text())
            print(json.dumps({"model": spec, "source": source, "graph_text": encoder, "glosses": args.glosses,
                              "hit@k": summary(result),
                              "czsl_hit@1": round(result["czsl"]["hit@1"], 4),
                              "gzsl_H": round(result["gzsl"]["H"], 4) if "gzsl" in result else None,
                              "train_s": trained["seconds"], "train_peak_mib": trained["peak_mib"],
                              "evaluate_s": evaluated["seconds"], "evaluate_peak_mib": evaluated["peak_mib"],
                              "hparams": result["run"]["hparams"]}), flush=True)


if __name__ == "__main__":
    main()
