"""The authors' SDL code (Alibaba-MIIL/ZS_SDL, fetched) trained and tested on our stored pooled COCO features.

Runs ``train.py``'s training loop ``train_zsl`` as published: its loss (``src/loss_functions/SDL_loss.py``),
its head (``to_sdl`` of ``src/models/utils/factory.py``: global average pooling, then a bias-free Linear to
``num_rows`` × 300), its optimiser, schedule and settings (Adam lr 2.5e-5, L2 3e-4 on weights only,
OneCycle with 10 % warm-up, batch 32, 10 epochs, ``num_rows`` 2, ``var_weight`` 0.01), and its per-epoch
test (``validate_multi``, ``helper_functions.py``). Changed only where the issue allows, device and data
loading:

- the TResNet body is the identity over our frozen features: each image is its pooled feature vector
  as a [D, 1, 1] map, so ``to_sdl``'s pooling returns it (the paper fine-tunes the backbone; we cannot);
- ``CocoDetection`` is replaced by tensors from our store: the 80-column targets ``train.py`` slices
  with ``cls_ids``, in its [3, 80] object-size layout (all in the last row: our labels carry no box
  sizes, and the script takes the max over the three rows). ``train_17_48`` / ``val_17_48`` /
  ``val_unseen`` are the store's trainval, test, and test images showing an unseen tag;
- ``.cuda()`` is the identity without CUDA; ``pycocotools``, ``randaugment`` (image loading and
  augmentation, unused on features) and ``src.models.tresnet`` (needs ``inplace_abn``) are stand-ins;
- the seed is set with the script's ``set_random_seeds`` (``--seed 0``); checkpoints go to a temporary folder.

Every call of the official ``mAP`` and ``calc_F1`` is recorded. Prints one JSON line: per epoch the official
GZSL and ZSL numbers (mAP, P/R/F1@3, in %), the best epoch's (as the script reports: the highest test F1)
and the last; and the last epoch's model under our metrics (:func:`pipeline.multilabel.zsl_gzsl_metrics`),
for a like-for-like comparison with ``evaluate``'s.

    python benchmarks/sdl_official.py --repo /work/.mirror/Alibaba-MIIL+ZS_SDL/repo \\
        --features coco_lite0_224.h5 --splits ../shared/data/coco/cls_ids.pickle \\
        --wordvec ../shared/data/coco/wordvec_array.pickle
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pipeline  # noqa: E402,F401  (thread wait policies)

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.coco import reported  # noqa: E402
from benchmarks.measure import PeakMemory  # noqa: E402
from benchmarks.snapshot import copy_files  # noqa: E402
from pipeline.datasets.coco import read_cls_ids  # noqa: E402
from pipeline.multilabel import zsl_gzsl_metrics  # noqa: E402
from pipeline.safe_pickle import load_pickle  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

OFFICIAL_FILES = ("train.py", "src/loss_functions/SDL_loss.py", "src/helper_functions/helper_functions.py",
                  "src/models/__init__.py", "src/models/utils/__init__.py", "src/models/utils/factory.py",
                  "src/models/utils/global_avg_pooling.py")


def official_sources(repo: Path, into: Path) -> Path:
    """The snapshot's files the benchmark runs, importable as packages under ``into``."""
    copy_files(repo, OFFICIAL_FILES, into)
    for package in ("src", "src/loss_functions", "src/helper_functions"):  # folders without an __init__.py
        (into / package / "__init__.py").touch()
    return into


def _stand_ins() -> None:
    """Modules the official files import for image loading, augmentation and the TResNet body."""
    coco = types.ModuleType("pycocotools.coco")
    coco.COCO = None  # type: ignore[attr-defined]
    randaugment = types.ModuleType("randaugment")
    randaugment.RandAugment = None  # type: ignore[attr-defined]
    tresnet = types.ModuleType("src.models.tresnet")
    tresnet.TResnetM = tresnet.TResnetL = tresnet.TResnetXL = None  # type: ignore[attr-defined]
    for name, module in (("pycocotools", types.ModuleType("pycocotools")), ("pycocotools.coco", coco),
                         ("randaugment", randaugment), ("src.models.tresnet", tresnet)):
        sys.modules[name] = module
    if not torch.cuda.is_available():  # the device: the script calls .cuda() on tensors and modules
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]


class FeatureBody(torch.nn.Module):
    """The stand-in TResNet: ``body`` is the identity over [B, D, 1, 1] feature maps, as ``to_sdl`` reads it."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim
        self.body = torch.nn.Sequential()


def _targets80(tags: np.ndarray, chosen: list[int]) -> torch.Tensor:
    """[N, 3, 80] long: the 65 store tags placed at their category columns, in the last size row."""
    out = torch.zeros((len(tags), 3, 80), dtype=torch.long)
    out[:, 2, chosen] = torch.from_numpy(tags.astype(np.int64))
    return out


def run_official(repo: Path, features: Path, splits: Path, wordvec: Path, epochs: int, seed: int) -> dict[str, Any]:
    """Train and test with ``train.py``'s ``train_zsl`` on the store; see the module docstring."""
    seen_ids, unseen_ids = read_cls_ids(splits)
    chosen = sorted(seen_ids + unseen_ids)
    with FeatureStore(features) as store:
        x, tags, rows = store.features(), store.tags, store.splits
        unseen_tags = store.unseen_tags
    assert tags is not None and unseen_tags is not None, "a multi-label (coco) store"
    if [chosen[i] for i in unseen_tags] != unseen_ids:
        raise SystemExit(f"{features}: its unseen tags are not the unseen ids of {splits}")
    maps = torch.from_numpy(x.astype(np.float32))[:, :, None, None]
    train, test = rows["trainval"], rows["test"]
    test_unseen = test[tags[test][:, unseen_tags].any(axis=1)]

    def loader(rows_: np.ndarray, shuffle: bool) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(maps[rows_], _targets80(tags[rows_], chosen))
        return torch.utils.data.DataLoader(data, batch_size=32, shuffle=shuffle)  # train.py's batch and shuffles

    with tempfile.TemporaryDirectory() as tmp:
        code = official_sources(repo, Path(tmp) / "code")
        _stand_ins()
        sys.path.insert(0, str(code))
        from src.models.utils.factory import to_sdl

        namespace: dict[str, Any] = {"__name__": "sdl_official_train"}  # not __main__: its main() reads images
        exec(compile((code / "train.py").read_text(), str(code / "train.py"), "exec"), namespace)  # noqa: S102
        args = namespace["parser"].parse_args(["--num-epochs", str(epochs), "--seed", str(seed),
                                               "--path_output", str(Path(tmp) / "outputs")])
        namespace["set_random_seeds"](args.seed)
        model = to_sdl(FeatureBody(maps.shape[1]), args)
        recorded: list[tuple[str, Any]] = []
        for name in ("mAP", "calc_F1"):
            official = namespace[name]
            namespace[name] = (lambda f, n: lambda *a, **k: recorded.append((n, f(*a, **k))) or recorded[-1][1])(
                official, name)
        wordvec_array = load_pickle(wordvec)["wordvec_array"]
        log = io.StringIO()
        start = time.perf_counter()
        with PeakMemory() as memory, contextlib.redirect_stdout(log):
            namespace["train_zsl"](model, loader(train, True), loader(test, False), loader(test_unseen, False),
                                   wordvec_array, args, unseen_ids=set(unseen_ids), seen_ids=set(seen_ids))
        seconds = time.perf_counter() - start

    # per epoch: calc_F1 then mAP of the GZSL test, then the same of the ZSL test
    per_epoch = []
    def setting(f1: tuple[float, float, float], m_ap: float) -> dict[str, float]:
        return {"mAP": round(m_ap, 2), **{k: round(v, 2) for k, v in zip(("P@3", "R@3", "F1@3"), f1)}}

    for e in range(0, len(recorded), 4):
        (_, gzsl_f1), (_, gzsl_map), (_, zsl_f1), (_, zsl_map) = recorded[e:e + 4]
        per_epoch.append({"gzsl": setting(gzsl_f1, gzsl_map), "zsl": setting(zsl_f1, zsl_map)})
    best = max(range(len(per_epoch)), key=lambda e: per_epoch[e]["gzsl"]["F1@3"])  # the script's model-highest
    model.eval()
    with torch.no_grad():
        out = model(maps[test]).float().numpy()
    embeddings = out.reshape(len(out), 300, -1).transpose(0, 2, 1)  # to_sdl's view(B, 300, K) -> [N, K, 300]
    vectors = np.asarray(wordvec_array, np.float32)[0].T[chosen]  # [65, 300] in the store's tag order
    ours, _ = zsl_gzsl_metrics(embeddings, vectors, tags[test], unseen_tags)
    return {"official": "Alibaba-MIIL/ZS_SDL train.py", "features": str(features), "epochs": epochs,
            "train_s": round(seconds, 1), "peak_mib": round(memory.main / 2**20),
            "best_epoch": best + 1, "best": per_epoch[best], "last": per_epoch[-1], "epochs_tested": per_epoch,
            "last_ours": reported(ours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="fetched Alibaba-MIIL/ZS_SDL (git dir or checkout)")
    parser.add_argument("--features", type=Path, required=True, help="our coco feature store")
    parser.add_argument("--splits", type=Path, required=True, help="cls_ids.pickle (48 seen / 17 unseen)")
    parser.add_argument("--wordvec", type=Path, required=True, help="the authors' COCO wordvec_array.pickle")
    parser.add_argument("--epochs", type=int, default=10, help="default: the script's (10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run_official(args.repo, args.features, args.splits, args.wordvec, args.epochs, args.seed)),
          flush=True)


if __name__ == "__main__":
    main()
