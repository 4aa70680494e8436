"""The authors' MSDN code (shiming-chen/MSDN, fetched) trained and tested on our stored grid features.

Runs ``MSDN_cub.py`` of the snapshot as published: its model (``core/MSDN.py``), its training loop,
seed, optimiser and settings, and its test (``core/helper_MSDN_CUB.py``), changed only where the
issue allows, device and data loading:

- ``core/CUBDataLoader.py`` is replaced by :class:`CUBDataLoader` below, the same interface filled
  from our feature store: ``feature_map`` [N, D, h, w] = the store's ``grid`` [N, h·w, D], the GBU
  splits and labels, ``att`` / ``original_att`` from ``att_splits.mat``, ``w2v_att`` from the authors'
  attribute word vectors. The features stay float16 in memory and become float32 per batch (the
  official loader holds float32: 11.8 GB at 448 px for CUB, more than this machine spares);
- ``dim_f = 2048`` (ResNet-101) is set to the store's channel count, the one line of the script changed;
- ``tensorflow`` (imported, never used, by ``core/MSDN.py``), ``pandas`` and ``skimage`` (the
  helper's logger and attention plots, unused here) are empty stand-ins;
- the device is the CPU unless CUDA is there (the script's own choice).

Every test the script runs (at iteration 0 and then once an epoch) is recorded, and one more after its
last iteration. Prints one JSON line: the script's reported numbers (its best test H with that
test's U and S, its best test ZSL accuracy: the best test epoch, as the paper reports), the last
test's, every test in order (``tests``), seconds and peak memory.

    python benchmarks/msdn_official.py --repo /work/.mirror/shiming-chen+MSDN/repo \\
        --features cub_lite0_448.h5 --splits ../shared/data/gbu/CUB/att_splits.mat \\
        --w2v ../shared/data/gbu_attribute_w2v/CUB_attribute.pkl [--epochs 30]
"""
from __future__ import annotations

import argparse
import importlib.machinery
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

from benchmarks.measure import PeakMemory  # noqa: E402
from benchmarks.snapshot import copy_files  # noqa: E402
from pipeline.datasets.gbu import read_att_splits  # noqa: E402
from pipeline.semantics.attributes import read_attribute_vectors  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402

OFFICIAL_FILES = ("MSDN_cub.py", "core/MSDN.py", "core/helper_MSDN_CUB.py")


class Float32Rows:
    """A float16 tensor that hands out float32 rows: ``x[index]`` and ``x.size()`` as the official
    loader's float32 tensors answer them, at half the memory."""

    def __init__(self, half: torch.Tensor):
        self.half = half

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.half[index].float()

    def size(self) -> torch.Size:
        return self.half.size()


def loader_module(features: Path, splits: Path, w2v: Path) -> types.ModuleType:
    """A stand-in for ``core/CUBDataLoader.py`` whose ``CUBDataLoader`` reads our store."""

    class CUBDataLoader:
        def __init__(self, data_path: str, device: torch.device, is_scale: bool = False,
                     is_unsupervised_attr: bool = False, is_balance: bool = True):
            if is_scale or is_unsupervised_attr:  # MSDN_cub.py passes neither
                raise ValueError("this loader reads the store as MSDN_cub.py uses it: is_scale=False, "
                                 "is_unsupervised_attr=False")
            self.device, self.is_balance, self.dataset = device, is_balance, "CUB"
            meta = read_att_splits(splits)
            with FeatureStore(features) as store:
                labels = store.labels
                grid = store.dataset("grid")
                regions, dim = grid.shape[1:]
                h = w = int(round(regions**0.5))  # a square crop's grid, row-major

                def maps(rows: np.ndarray) -> torch.Tensor:  # [n, D, h, w] float16, read in blocks
                    out = torch.empty((len(rows), dim, h, w), dtype=torch.float16)
                    for start in range(0, len(rows), 256):
                        block = grid[np.sort(rows[start:start + 256])]
                        out[start:start + len(block)] = torch.from_numpy(
                            np.ascontiguousarray(block.transpose(0, 2, 1).reshape(len(block), dim, h, w)))
                    return out

                trainval, test_seen, test_unseen = (meta["splits"][k] for k in ("trainval", "test_seen", "test_unseen"))
                self.data = {
                    "train_seen": {"resnet_features": Float32Rows(maps(trainval)),
                                   "labels": torch.from_numpy(labels[trainval]).long()},
                    "train_unseen": {"resnet_features": None, "labels": None},
                    "test_seen": {"resnet_features": Float32Rows(maps(test_seen)),
                                  "labels": torch.from_numpy(labels[test_seen])},
                    "test_unseen": {"resnet_features": Float32Rows(maps(test_unseen)),
                                    "labels": torch.from_numpy(labels[test_unseen])},
                }
            self.dim_f = dim
            self.att = torch.from_numpy(meta["att"]).float().to(device)
            self.original_att = torch.from_numpy(meta["original_att"]).float().to(device)
            self.normalize_att = self.original_att / 100
            self.w2v_att = torch.from_numpy(read_attribute_vectors(w2v, len(meta["att"][0]))).float().to(device)
            train_label = self.data["train_seen"]["labels"]
            self.seenclasses = torch.from_numpy(np.unique(train_label.numpy())).to(device)
            self.unseenclasses = torch.from_numpy(np.unique(self.data["test_unseen"]["labels"].numpy())).to(device)
            self.ntrain = len(trainval)
            self.ntrain_class = self.seenclasses.size(0)
            self.ntest_class = self.unseenclasses.size(0)
            self.idxs_list = [np.squeeze(torch.nonzero(train_label == c.cpu()).numpy()) for c in self.seenclasses]

        def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """The official ``next_batch``, unchanged."""
            if self.is_balance:
                idx = []
                n_samples_class = max(batch_size // self.ntrain_class, 1)
                sampled_idx_c = np.random.choice(np.arange(self.ntrain_class), min(self.ntrain_class, batch_size),
                                                 replace=False).tolist()
                for i_c in sampled_idx_c:
                    idxs = self.idxs_list[i_c]
                    idx.append(np.random.choice(idxs, n_samples_class))
                idx = torch.from_numpy(np.concatenate(idx))
            else:
                idx = torch.randperm(self.ntrain)[0:batch_size]
            batch_feature = self.data["train_seen"]["resnet_features"][idx].to(self.device)
            batch_label = self.data["train_seen"]["labels"][idx].to(self.device)
            batch_att = self.att[batch_label].to(self.device)
            return batch_label, batch_feature, batch_att

    module = types.ModuleType("core.CUBDataLoader")
    module.CUBDataLoader = CUBDataLoader  # type: ignore[attr-defined]
    return module


def official_sources(repo: Path, into: Path) -> Path:
    """The snapshot's files the benchmark runs, importable as packages under ``into``."""
    copy_files(repo, OFFICIAL_FILES, into)
    (into / "core" / "__init__.py").touch()
    return into


def run_official(repo: Path, features: Path, splits: Path, w2v: Path, epochs: int | None) -> dict[str, Any]:
    """Train and test with ``MSDN_cub.py`` on the store; see the module docstring."""
    with tempfile.TemporaryDirectory() as tmp:
        code = official_sources(repo, Path(tmp))
        for stub in ("tensorflow", "pandas", "skimage", "skimage.transform"):
            module = types.ModuleType(stub)
            module.__spec__ = importlib.machinery.ModuleSpec(stub, None)  # importlib.util.find_spec reads it
            sys.modules.setdefault(stub, module)
        sys.modules["core.CUBDataLoader"] = loader_module(features, splits, w2v)
        sys.path.insert(0, str(code))
        import core.helper_MSDN_CUB as helper  # the official test, recorded at every call

        tests: list[tuple[float, float, float, float]] = []
        official_test = helper.eval_zs_gzsl

        def recorded(*args: Any, **kwargs: Any) -> tuple[float, float, float, float]:
            result = official_test(*args, **kwargs)
            tests.append(result)
            return result

        helper.eval_zs_gzsl = recorded
        script = (code / "MSDN_cub.py").read_text()
        with FeatureStore(features) as store:
            dim = store.dataset("grid").shape[2]
        assert "dim_f = 2048" in script
        script = script.replace("dim_f = 2048", f"dim_f = {dim}")
        if epochs is not None:
            script = script.replace("nepoches = 30", f"nepoches = {epochs}")
        namespace: dict[str, Any] = {"__name__": "__main__"}
        start = time.perf_counter()
        with PeakMemory() as memory:
            exec(compile(script, str(code / "MSDN_cub.py"), "exec"), namespace)  # noqa: S102 (the official script)
            seconds = time.perf_counter() - start
            recorded(namespace["dataloader"], namespace["model"], namespace["device"], bias_seen=0, bias_unseen=0)
        best_u, best_s, best_h = namespace["best_performance"]
        seen, unseen, h, zsl = tests[-1]
        return {"official": "shiming-chen/MSDN MSDN_cub.py", "features": str(features), "dim_f": dim,
                "iterations": namespace["niters"], "train_s": round(seconds, 1), "peak_mib": round(memory.main / 2**20),
                "best_test": {"T1": round(namespace["best_acc"], 4), "U": round(best_u, 4), "S": round(best_s, 4),
                              "H": round(best_h, 4)},
                "last": {"T1": round(zsl, 4), "U": round(unseen, 4), "S": round(seen, 4), "H": round(h, 4)},
                "tests": [{"T1": round(z, 4), "U": round(u, 4), "S": round(s, 4), "H": round(h, 4)}
                          for s, u, h, z in tests]}  # every test the script ran, then the last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="fetched shiming-chen/MSDN (git dir or checkout)")
    parser.add_argument("--features", type=Path, required=True, help="our feature store with a grid")
    parser.add_argument("--splits", type=Path, required=True, help="CUB att_splits.mat")
    parser.add_argument("--w2v", type=Path, required=True, help="CUB_attribute.pkl, the authors' attribute vectors")
    parser.add_argument("--epochs", type=int, default=None, help="default: the script's (30)")
    args = parser.parse_args()
    print(json.dumps(run_official(args.repo, args.features, args.splits, args.w2v, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
