"""IN200: the project end to end on 1000 real ImageNet photos, for every single-label model that applies.

Protocol (``../shared/README.md``): the 150 ILSVRC-2012 classes of ``imagen200`` are seen (the first
4 images of each, by file name, train; the 5th is a test-seen image), the 50 other classes (person,
dog, car, chair, ...: never seen by the backbone either) are unseen (all 5 images test-unseen).
CZSL Hit@1/5 among the 50 unseen classes and GZSL U/S/H over all 200, ranks pessimistic under ties.

Steps, as a user runs them: lay the images out as the ``imagenet`` dataset (``train/``, ``val/``,
``test/`` wnid folders of symlinks and a split file), ``extract`` with the default backbone
(EfficientNet-Lite0, its ImageNet weights and classifier head), ``semantics`` (GloVe and MiniLM
class-name vectors, the WordNet graph with node vectors from ``--graph-text``), then per model
``train`` (selection on validation included in the time) and ``evaluate``. First it checks the
backbone: top-1/top-5 of its own ImageNet classifier on the 750 photos of the 150 ILSVRC classes,
through our extraction and through timm's reference pipeline for the same weights.

    python benchmarks/in200.py [--images ../shared/data/imagen200] [--work /tmp/in200] \
        [--models 'conse;conse:graph_steps=2;eszsl;gcn_regression;joint_gcn'] [--text minilm,glove] [--glosses]

``--text`` lists graph node encoders (``minilm+glove``: both, concatenated); the models read the class-name
vectors of the first. ``--glosses``: MiniLM also reads each class's and node's WordNet definition.

Prints one JSON object per line: ``backbone``, then one per (model, text encoder).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (first: thread wait policies, torchvision op schemas)

# isort: split
import numpy as np  # noqa: E402

# torch.optim imports torch._dynamo on its first use (~2 s here): a one-time cost of the process, kept
# out of the training time of whichever model happens to create the first optimizer
import torch._dynamo  # noqa: E402,F401

from benchmarks.measure import PeakMemory  # noqa: E402
from pipeline.backbones import lite0_package_weights  # noqa: E402
from pipeline.datasets.imagenet import load_imagenet  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.inputs import load_inputs  # noqa: E402
from pipeline.models import make_model  # noqa: E402
from pipeline.semantics.build import SemanticsConfig, build_semantics  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402
from pipeline.train import TrainConfig, train  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "imagen200"
# pooled features + class names / graph suffice; ``model:key=value`` fixes a hyperparameter
MODELS = ("conse", "conse:graph_steps=2", "eszsl", "gcn_regression", "joint_gcn")
TRAIN_IMAGES = 4  # per seen class; the next one is its test-seen image


def in200_layout(images: Path, root: Path, split: Path | None = None) -> Path:
    """Symlink ``images/images/*.jpg`` into the ``imagenet`` dataset layout under ``root``; returns the path
    of its split file: ``split`` when given (e.g. DGP's ``imagenet-split.json``, which lists the seen wnids
    among its ``train`` and the unseen ones among its ``test``), else one written under ``root`` with the
    seen wnids as ``train`` and the unseen as ``test``."""
    classes = json.loads((images / "classes.json").read_text())
    seen, unseen = classes["seen_ilsvrc1k"], classes["unseen_not_in_ilsvrc1k"]
    by_class: dict[str, list[Path]] = {}
    for path in sorted((images / "images").glob("*.jpg")):
        by_class.setdefault(path.name.split("_", 1)[0], []).append(path)
    for wnid in seen + unseen:
        for k, path in enumerate(by_class[wnid]):
            part = "test" if wnid in unseen else ("train" if k < TRAIN_IMAGES else "val")
            link = root / part / wnid / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(path.resolve(), link)
    if split is None:
        split = root / "in200-split.json"
        split.write_text(json.dumps({"train": seen, "test": unseen}))
    return split


def head_accuracy(store_path: Path) -> dict[str, Any]:
    """Top-1/top-5 of the store's classifier head on its images of classes the head knows (ours)."""
    with FeatureStore(store_path) as store:
        head, classes, labels, features = store.head, store.classes, store.labels, store.features()
    assert head is not None, f"{store_path}: no classifier head recorded"
    rows = head.rows_of(classes)[labels]
    known = rows >= 0
    top5 = np.argsort(-head.logits(features[known]), axis=1)[:, :5]
    return {"images": int(known.sum()), "top1": float(np.mean(top5[:, 0] == rows[known])),
            "top5": float(np.mean((top5 == rows[known, None]).any(axis=1))), "predictions": top5[:, 0]}


def reference_accuracy(files: list[Path], wnids: list[str]) -> dict[str, Any]:
    """Top-1/top-5 of the same Lite0 weights through timm's own pipeline: ``tf_efficientnet_lite0`` and
    its ``resolve_data_config`` / ``create_transform`` preprocessing (the reference)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    net = timm.create_model("tf_efficientnet_lite0").eval()
    package = torch.load(lite0_package_weights(), map_location="cpu", weights_only=True)
    net.load_state_dict(dict(zip(net.state_dict(), package.values())))
    transform = create_transform(**resolve_data_config({}, model=net))
    index = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    labels = np.array([index[w] for w in wnids])
    top5 = []
    with torch.no_grad():
        for start in range(0, len(files), 50):
            batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[start:start + 50]])
            top5.append(net(batch).topk(5, dim=1).indices.numpy())
    best = np.concatenate(top5)
    return {"images": len(files), "top1": float(np.mean(best[:, 0] == labels)),
            "top5": float(np.mean((best == labels[:, None]).any(axis=1))), "predictions": best[:, 0]}


def prepare(images: Path, work: Path, graph_texts: list[str], glosses: bool = False) -> tuple[Path, dict[str, Path]]:
    """Layout, extraction (default backbone) and one semantics file per graph text encoder."""
    split = in200_layout(images, work / "root")
    features = work / "in200_lite0.h5"
    extract(load_imagenet(work / "root", split), _default_backbone(), features, workers=2)
    semantics = {}
    for encoder in graph_texts:
        semantics[encoder] = work / f"in200_semantics_{encoder}{'_glosses' if glosses else ''}.h5"
        build_semantics(features, semantics[encoder], SemanticsConfig(text=("glove", "minilm"), graph="wordnet",
                                                                      graph_text=encoder, glosses=glosses))
    return features, semantics


def _default_backbone() -> Any:
    from pipeline.backbones import load_backbone

    return load_backbone("efficientnet_lite0", "imagenet", 224)


def run_model(spec: str, features: Path, semantics: Path, source: str, plots: Path) -> dict[str, Any]:
    """Train (selection included) and evaluate one model, ``name`` or ``name:key=value,...`` (fixed
    hyperparameters, values read as JSON); the numbers the README reports."""
    model, _, fixed = spec.partition(":")
    hparams = {key: json.loads(value) for key, value in (item.split("=", 1) for item in fixed.split(",") if item)}
    inputs = load_inputs(features, semantics, source)
    with PeakMemory() as memory:
        start = time.perf_counter()
        checkpoint = train(inputs, TrainConfig(model=model, semantics=source, hparams=hparams))
        seconds = time.perf_counter() - start
    trained = make_model(checkpoint["model"], **checkpoint["hparams"])
    trained.load_state(checkpoint["state"])
    metrics = evaluate(trained, checkpoint, inputs, plots)
    czsl, gzsl = metrics["czsl"], metrics["gzsl"]
    return {"model": spec, "source": source, "czsl_hit@1": czsl["hit@1"], "czsl_hit@5": czsl["hit@5"],
            "gzsl_U": gzsl["U"], "gzsl_S": gzsl["S"], "gzsl_H": gzsl["H"],
            "gzsl_H_uncalibrated": metrics["gzsl_uncalibrated"]["H"], "train_s": round(seconds, 2),
            "peak_extra_mib": memory.extra_mib, "hparams": checkpoint["hparams"],
            "supervision": checkpoint["fit"].get("supervision")}


def add_semantics_options(parser: argparse.ArgumentParser) -> None:
    """``--text`` and ``--glosses``, the semantics options of this benchmark and ``in21k.py``."""
    parser.add_argument("--text", default="minilm,glove", help="graph node encoders to run with (minilm+glove: "
                                                                   "both; the class names: the first's)")
    parser.add_argument("--glosses", action="store_true", help="minilm also reads the classes' WordNet definitions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/in200"))
    parser.add_argument("--models", default=";".join(MODELS), help="models to run, separated by ';'")
    add_semantics_options(parser)
    args = parser.parse_args()
    texts = args.text.split(",")
    features, semantics = prepare(args.images, args.work, texts, args.glosses)

    ours = head_accuracy(features)
    with FeatureStore(features) as store:
        ids, classes, labels, head = store.image_ids, store.classes, store.labels, store.head
    assert head is not None
    known = np.flatnonzero(head.rows_of(classes)[labels] >= 0)
    reference = reference_accuracy([args.work / "root" / ids[i] for i in known], [classes[labels[i]] for i in known])
    agree = float(np.mean(ours.pop("predictions") == reference.pop("predictions")))
    print(json.dumps({"backbone": "efficientnet_lite0", "ours": ours, "reference_timm": reference,
                      "same_top1_prediction": agree}), flush=True)
    for encoder in texts:
        for spec in args.models.split(";"):
            result = run_model(spec, features, semantics[encoder], f"text:{encoder.split('+')[0]}",
                               args.work / "plots" / f"{spec.replace(':', '_')}_{encoder}")
            print(json.dumps({**result, "graph_text": encoder, "glosses": args.glosses}), flush=True)


if __name__ == "__main__":
    main()
