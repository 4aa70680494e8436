"""Real multi-label photos: SDL on the MS-COCO photos of ``../shared/data/coco_real`` (48 seen / 17 unseen tags),
through the CLI, beside the authors' SDL code and a training-free baseline on the same features.

Steps, as a user runs them: ``extract`` the ``coco`` dataset (its label-table layout, Bansal's split from
``cls_ids.pickle``: 2,751 train2014 photos showing a seen tag and no unseen one, 1,196 val2014 test photos)
with the default backbone (EfficientNet-Lite0, ImageNet weights, pooled + 7×7 grid; a finished store is
reused), ``semantics`` (the authors' 300-d ``wordvec_array.pickle``, MiniLM and GloVe over the tag names),
then per (model, encoder) ``train`` (selection on validation tags of trainval only) and ``evaluate``.
Beside them, on the same store: the official SDL training loop (``benchmarks/sdl_official.py``, its best
test epoch and its last) and a training-free ConSE over the backbone's ImageNet classes
(:func:`imagenet_conse`).

    python benchmarks/coco.py [--work /tmp/coco] [--models 'sdl;sdl:input=grid'] \\
        [--encoders vectors,minilm,glove] [--sdl-repo /work/.mirror/Alibaba-MIIL+ZS_SDL/repo]

Prints one JSON object per line: ``extract``, ``semantics``, then one per (model, encoder) with ZSL
(the 17 unseen tags are the candidates) and GZSL (all 65) ``mAP`` (every test image ranked) and
``mAP_sdl`` (SDL's: only images with a positive among the candidates), P / R / F1 at k = 3 and 5,
train seconds and peak MiB; then ``imagenet_conse`` per text encoder and ``sdl_official``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.in21k import model_spec, run_cli  # noqa: E402
from pipeline.datasets.coco import CATEGORY_NAMES  # noqa: E402
from pipeline.models.conse import convex_combination  # noqa: E402
from pipeline.norms import l2_normalize  # noqa: E402
from pipeline.multilabel import zsl_gzsl_metrics  # noqa: E402
from pipeline.semantics.build import SemanticsConfig, class_name_embeddings  # noqa: E402
from pipeline.semantics.file import SemanticsFile  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
IMAGES = SHARED / "coco_real"
SPLITS = SHARED / "coco" / "cls_ids.pickle"
WORDVEC = SHARED / "coco" / "wordvec_array.pickle"
MODELS = ("sdl", "sdl:input=grid")  # ``model:key=value,...`` fixes hyperparameters
ENCODERS = ("vectors", "minilm", "glove")  # vectors: the authors' wordvec_array.pickle
REPORTED = ("mAP", "mAP_sdl", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5")


def reported(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The reported numbers of the ``zsl`` and ``gzsl`` settings, rounded."""
    return {s: {k: round(float(metrics[s][k]), 4) for k in REPORTED} for s in ("zsl", "gzsl")}


def imagenet_under(tag: str, imagenet: list[str]) -> list[int]:
    """Indices of the ``imagenet`` wnids that are a WordNet noun sense of ``tag`` or a hyponym of one (any
    sense, so at least every class whose training images showed ``tag``: airliner for airplane, the dog
    breeds and the hotdog for dog)."""
    from pipeline.semantics.wordnet import synset_of, wordnet

    senses = set(wordnet().synsets("_".join(tag.split()), pos="n"))
    return [i for i, wnid in enumerate(imagenet)
            if senses & {synset_of(wnid), *synset_of(wnid).closure(lambda s: s.hypernyms())}]


def imagenet_conse(features: Path, semantics: Path, encoder: str, top: int = 10,
                   without_unseen: bool = False) -> dict[str, Any]:
    """Training-free baseline: each test image is the mean of the ``encoder`` vectors of its ``top`` most
    probable ImageNet classes under the backbone's own classifier, weighted by their softmax probabilities
    (ConSE, Norouzi et al. 2014, temperature 1 and T = 10 as the paper); a tag is its ``encoder`` vector in
    ``semantics``; tags ranked by cosine. Nothing is fitted or chosen.

    ``without_unseen`` (the ablation): the ImageNet classes that are an unseen tag or a kind of one
    (:func:`imagenet_under`: airliner for airplane, the dog breeds for dog, ...) are left out of the
    candidates, so no class whose training images showed an unseen tag lends its vector."""
    start = time.perf_counter()
    with FeatureStore(features) as store:
        head, test, classes = store.head, store.splits["test"], store.classes
        x, tags, unseen = store.features(test), store.tags, store.unseen_tags
    if head is None:
        raise SystemExit(f"{features}: the store records no classifier head; extract with ImageNet weights")
    assert tags is not None and unseen is not None
    imagenet, _ = class_name_embeddings(encoder, head.classes, SemanticsConfig())
    logits = head.logits(x)
    left_out = {classes[t]: imagenet_under(classes[t], head.classes) for t in unseen} if without_unseen else {}
    logits[:, [i for rows in left_out.values() for i in rows]] = -np.inf
    embeddings = convex_combination(logits, l2_normalize(imagenet), 1.0, top)
    with SemanticsFile(semantics) as s:
        tag_vectors = l2_normalize(s.text(encoder))
    metrics, _ = zsl_gzsl_metrics(embeddings, tag_vectors, tags[test], unseen)
    out = {**reported(metrics), "seconds": round(time.perf_counter() - start, 1)}
    return {**out, "left_out": {t: len(rows) for t, rows in left_out.items()}} if without_unseen else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder holding labels.csv and images/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/coco"))
    parser.add_argument("--models", default=";".join(MODELS), help="models to run, separated by ';'")
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="tag vectors, comma-separated")
    parser.add_argument("--sdl-repo", type=Path, default=None,
                        help="fetched Alibaba-MIIL/ZS_SDL: also run the official SDL training loop")
    args = parser.parse_args()
    if not (args.images / "labels.csv").is_file() and not (args.images / "annotations").is_dir():
        parser.error(f"--images {args.images}: holds neither labels.csv nor annotations/; give "
                     "../shared/data/coco_real or an MS-COCO 2014 folder")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    features, semantics = work / "coco_lite0_224.h5", work / "coco_semantics.h5"
    names = work / "coco_category_names.txt"  # the rows of wordvec_array.pickle: the 80 categories by id
    names.write_text("\n".join(CATEGORY_NAMES) + "\n")
    encoders = args.encoders.split(",")

    step = run_cli(["extract", "--dataset", "coco", "--root", str(args.images), "--splits", str(SPLITS),
                    "--output", str(features)])
    print(json.dumps({"step": "extract", "seconds": step["seconds"], "peak_mib": step["peak_mib"]}), flush=True)
    text = [arg for e in encoders for arg in ("--text", f"vectors:{WORDVEC}" if e == "vectors" else e)]
    step = run_cli(["semantics", "--features", str(features), "--output", str(semantics), *text,
                    *(["--vector-names", str(names)] if "vectors" in encoders else [])])
    print(json.dumps({"step": "semantics", "seconds": step["seconds"]}), flush=True)
    for spec in args.models.split(";"):
        model, name, hparams = model_spec(spec)
        for encoder in encoders:
            checkpoint, metrics = work / f"{name}_{encoder}.pt", work / f"{name}_{encoder}.json"
            trained = run_cli(["train", "--model", model, "--features", str(features), "--semantics", str(semantics),
                               "--source", f"text:{encoder}", "--output", str(checkpoint), *hparams])
            run_cli(["evaluate", "--model-file", str(checkpoint), "--features", str(features), "--semantics",
                     str(semantics), "--metrics", str(metrics), "--plots", str(work / "plots" / f"{name}_{encoder}")])
            result = json.loads(metrics.read_text())
            print(json.dumps({"model": spec, "encoder": encoder, **reported(result), "train_s": trained["seconds"],
                              "train_peak_mib": trained["peak_mib"], "hparams": result["run"]["hparams"]}), flush=True)
    for encoder in encoders:
        if encoder != "vectors":  # the authors' vectors cover the 80 COCO names only, not ImageNet's classes
            for without_unseen in (False, True):
                print(json.dumps({"model": "imagenet_conse" + ("_without_unseen" if without_unseen else ""),
                                  "encoder": encoder, **imagenet_conse(features, semantics, encoder,
                                                                        without_unseen=without_unseen)}), flush=True)
    if args.sdl_repo is not None:
        official = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sdl_official.py"), "--repo",
                                   str(args.sdl_repo), "--features", str(features), "--splits", str(SPLITS),
                                   "--wordvec", str(WORDVEC)], check=True, capture_output=True, text=True, cwd=ROOT)
        print(json.dumps({"model": "sdl_official", "encoder": "vectors",
                          **json.loads(official.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
