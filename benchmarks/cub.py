"""Real birds: every attribute model on the 11,788 CUB-200-2011 photos (GBU proposed split), through the CLI,
beside the authors' MSDN code and the ESZSL reference closed form on the same features.

Steps, as a user runs them: lay a fetched snapshot of ``Zeyu-Shen/deit`` (``datasets/cub200_cropped``:
the uncropped CUB-200-2011 photos, file names = the GBU image list) out as ``CUB_200_2011/images/``;
per image size (224: a 7×7 grid; 448: 14×14, MSDN's input size) ``extract`` with the default backbone
(EfficientNet-Lite0, ImageNet weights; resumable: a finished store is reused), ``semantics`` (the GBU
class attributes and the authors' 300-d attribute-name vectors), then per model ``train`` (selection and
γ on validation only, a class-disjoint split of the 150 seen classes) and ``evaluate``. Beside them, on
the same stores: the official MSDN script (``benchmarks/msdn_official.py``: its best test epoch and its
last) and the ESZSL reference (:func:`reference_eszsl`).

    python benchmarks/cub.py --deit /work/.mirror/Zeyu-Shen+deit/repo [--work /tmp/cub] [--sizes 224,448] \\
        [--models 'eszsl;conse;msdn;drmn'] [--msdn-repo /work/.mirror/shiming-chen+MSDN/repo]

Prints one JSON object per line: ``extract`` and ``semantics`` per size, then one per (model, size) with
CZSL T1 (per-class mean top-1 among the 50 unseen classes), GZSL U / S / H (calibrated by the validation
γ), AUSUC, train seconds and peak MiB, then ``eszsl_reference`` and ``msdn_official`` per size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.in21k import model_spec, run_cli  # noqa: E402
from pipeline.datasets.gbu import read_att_splits  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SPLITS = SHARED / "gbu" / "CUB" / "att_splits.mat"
W2V = SHARED / "gbu_attribute_w2v" / "CUB_attribute.pkl"
NAMES = SHARED / "gbu_attribute_w2v" / "CUB_attributes.txt"
MODELS = ("eszsl", "conse", "msdn", "drmn")  # ``model:key=value,...`` fixes hyperparameters
SNAPSHOT_FOLDER = "datasets/cub200_cropped"


def cub_layout(deit: Path, root: Path) -> Path:
    """``root`` (a ``CUB_200_2011`` folder) with ``images/<class>/<file>.jpg`` symlinked to the photos of
    ``deit``: a fetched git directory of Zeyu-Shen/deit (its newest commit is unpacked under ``root``'s
    parent) or a folder holding ``datasets/cub200_cropped/{train,val}/<class>/``. The deit train/val split
    is not GBU's and is ignored. Returns ``root``."""
    photos = deit / SNAPSHOT_FOLDER
    if not photos.is_dir():
        unpacked = root.parent / "deit"
        photos = unpacked / SNAPSHOT_FOLDER
        if not photos.is_dir():
            unpacked.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "--git-dir", str(deit), "archive", "HEAD", SNAPSHOT_FOLDER],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(unpacked)], input=archive, check=True)
    for path in sorted(photos.glob("*/*/*.jpg")):
        link = root / "images" / path.parent.name / path.name
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), link)
    return root


def reference_eszsl(features: Path, splits: Path, val_seed: int = 0) -> dict[str, Any]:
    """ESZSL as the reference code (mvp18/Popular-ZSL-Algorithms ``eszsl_gzsl.py``) computes it on the
    pooled features: ``W = pinv(XXᵀ + 10^α I) X Y Sᵀ pinv(SSᵀ + 10^γ I)``, {0, 1} labels, raw features,
    α, γ ∈ {−3..3} chosen by per-class accuracy on validation classes, refit on trainval; CZSL among the
    unseen classes, GZSL by argmax over all 200 (uncalibrated, as the reference). The xlsa17 train/val
    locs are not in our ``att_splits.mat``: validation is 50 of the 150 seen classes drawn from ``val_seed``
    (GBU's proportions)."""
    meta = read_att_splits(splits)
    sig = meta["att"].T  # [A, C], the reference's signature matrix
    with FeatureStore(features) as store:
        x_all, labels = store.features(), store.labels
    loc = meta["splits"]
    seen = np.unique(labels[loc["trainval"]])
    unseen = np.unique(labels[loc["test_unseen"]])
    val_classes = np.sort(np.random.default_rng(val_seed).choice(seen, len(seen) // 3, replace=False))
    train_classes = np.setdiff1d(seen, val_classes)

    def fit(rows: np.ndarray, classes: np.ndarray, alphas: range, gammas: range) -> dict[tuple[int, int], np.ndarray]:
        """The reference's ``find_W`` for every (α, γ) (each pinv computed once)."""
        x = x_all[rows].T.astype(np.float64)  # [D, n]
        y = (labels[rows][:, None] == classes[None, :]).astype(np.float64)
        s = sig[:, classes]
        left = {a: np.linalg.pinv(x @ x.T + 10.0**a * np.eye(len(x))) @ (x @ y @ s.T) for a in alphas}
        right = {g: np.linalg.pinv(s @ s.T + 10.0**g * np.eye(len(s))) for g in gammas}
        return {(a, g): left[a] @ right[g] for a in alphas for g in gammas}

    def per_class(rows: np.ndarray, w: np.ndarray, classes: np.ndarray, targets: np.ndarray) -> float:
        predicted = classes[np.argmax(x_all[rows] @ w @ sig[:, classes], axis=1)]
        truth = labels[rows]
        return float(np.mean([np.mean(predicted[truth == c] == c) for c in targets]))

    trainval = loc["trainval"]
    train_rows = trainval[np.isin(labels[trainval], train_classes)]
    val_rows = trainval[np.isin(labels[trainval], val_classes)]
    start = time.perf_counter()
    grid = range(-3, 4)
    scores = {key: per_class(val_rows, w, val_classes, val_classes)
              for key, w in fit(train_rows, train_classes, grid, grid).items()}
    alpha, gamma = max(scores, key=scores.get)  # type: ignore[arg-type]  # the first best, as the reference's >
    w = fit(trainval, seen, range(alpha, alpha + 1), range(gamma, gamma + 1))[alpha, gamma]
    seconds = time.perf_counter() - start
    everything = np.arange(sig.shape[1])
    u = per_class(loc["test_unseen"], w, everything, unseen)
    s = per_class(loc["test_seen"], w, everything, seen)
    return {"T1": round(per_class(loc["test_unseen"], w, unseen, unseen), 4), "U": round(u, 4), "S": round(s, 4),
            "H": round(2 * u * s / (u + s) if u + s else 0.0, 4), "alpha": alpha, "gamma": gamma,
            "train_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deit", type=Path, required=True,
                        help="fetched Zeyu-Shen/deit (git dir) or a folder holding datasets/cub200_cropped")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cub"))
    parser.add_argument("--sizes", default="224,448", help="image sizes, comma-separated")
    parser.add_argument("--models", default=";".join(MODELS), help="models to run, separated by ';'")
    parser.add_argument("--msdn-repo", type=Path, default=None,
                        help="fetched shiming-chen/MSDN: also run the official MSDN script on each store")
    parser.add_argument("--no-reference", action="store_true", help="skip the ESZSL reference closed form")
    parser.add_argument("--seeds", default="0", help="train seeds, comma-separated: one run of each model per seed "
                                                      "(the seed also draws the validation classes)")
    args = parser.parse_args()
    work = args.work.resolve()
    if not (args.deit / SNAPSHOT_FOLDER).is_dir() and not (args.deit / "HEAD").is_file():
        parser.error(f"--deit {args.deit}: neither a fetched git directory of Zeyu-Shen/deit nor a folder holding "
                     f"{SNAPSHOT_FOLDER}; fetch github:Zeyu-Shen/deit and pass the path fetch prints")
    root = cub_layout(args.deit.resolve(), work / "CUB_200_2011")
    for size in args.sizes.split(","):
        features, semantics = work / f"cub_lite0_{size}.h5", work / f"cub_semantics_{size}.h5"
        step = run_cli(["extract", "--dataset", "cub", "--root", str(root), "--splits", str(SPLITS),
                        "--image-size", size, "--output", str(features)])
        print(json.dumps({"step": "extract", "size": int(size), "seconds": step["seconds"],
                          "peak_mib": step["peak_mib"]}), flush=True)
        step = run_cli(["semantics", "--features", str(features), "--output", str(semantics), "--attributes",
                        str(SPLITS), "--attribute-names", str(NAMES), "--attribute-vectors", str(W2V)])
        print(json.dumps({"step": "semantics", "size": int(size), "seconds": step["seconds"]}), flush=True)
        for spec, seed in ((spec, int(seed)) for spec in args.models.split(";") for seed in args.seeds.split(",")):
            model, name, hparams = model_spec(spec)
            name += f"_s{seed}" if seed else ""
            checkpoint, metrics = work / f"{name}_{size}.pt", work / f"{name}_{size}.json"
            trained = run_cli(["train", "--model", model, "--features", str(features), "--semantics", str(semantics),
                               "--seed", str(seed), "--output", str(checkpoint), *hparams])
            run_cli(["evaluate", "--model-file", str(checkpoint), "--features", str(features), "--semantics",
                     str(semantics), "--metrics", str(metrics), "--plots", str(work / "plots" / f"{name}_{size}")])
            result = json.loads(metrics.read_text())
            gzsl = result["gzsl"]
            print(json.dumps({"model": spec, "size": int(size), "seed": seed, "T1": round(result["czsl"]["acc"], 4),
                              "U": round(gzsl["U"], 4), "S": round(gzsl["S"], 4), "H": round(gzsl["H"], 4),
                              "ausuc": round(result["ausuc"], 4), "train_s": trained["seconds"],
                              "train_peak_mib": trained["peak_mib"], "hparams": result["run"]["hparams"]}), flush=True)
        if not args.no_reference:
            print(json.dumps({"model": "eszsl_reference", "size": int(size), **reference_eszsl(features, SPLITS)}),
                  flush=True)
        if args.msdn_repo is not None:
            official = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "msdn_official.py"), "--repo",
                                       str(args.msdn_repo), "--features", str(features), "--splits", str(SPLITS),
                                       "--w2v", str(W2V)], check=True, capture_output=True, text=True, cwd=ROOT)
            print(json.dumps({"model": "msdn_official", "size": int(size),
                              **json.loads(official.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
