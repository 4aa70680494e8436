"""DVC runs never delete work: a failed experiment leaves the feature store as it was.

Runs DVC itself on a copy of the project (its stages, code and params, with a small synthetic set)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT = (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml",
           "zsl_torchvision_hook.py", "stages", "pipeline")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "TQDM_DISABLE": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the project whose ``dvc repro extract`` has run (24 synthetic images, no grid)."""
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synthetic"]["images_per_class"] = 2
    params["extract"].update(grid=False, mid_grid=False, workers=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"],
                    [sys.executable, "-m", "dvc", "repro", "extract"]):
        done = _run(command, root)
        assert done.returncode == 0, done.stdout + done.stderr
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "extracted"], root)
    return root


@pytest.mark.parametrize("override, says", [
    ("extract.batch_size=-3", "batch_size"),  # refused by the params check, after DVC decided to run the stage
    ("extract.pretrained=missing.pt", "missing.pt"),  # fails while loading the backbone's weights
])
def test_a_failed_dvc_experiment_leaves_the_feature_store_untouched(project, override, says):
    store = project / "features" / "image_features.h5"
    before = _digest(store)
    done = _run([sys.executable, "-m", "dvc", "exp", "run", "extract", "-S", override], project)
    assert done.returncode != 0
    assert says in done.stdout + done.stderr
    assert store.is_file(), "DVC deleted the feature store before the stage failed"
    assert _digest(store) == before
    _run(["git", "checkout", "params.yaml"], project)  # a failed experiment leaves its value in the workspace


def test_a_dvc_experiment_with_other_extract_settings_replaces_the_store(project):
    from pipeline.store import FeatureStore

    done = _run([sys.executable, "-m", "dvc", "exp", "run", "extract", "-S", "extract.dtype=float32"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    with FeatureStore(project / "features" / "image_features.h5") as store:
        assert store.complete and store.features([0]).dtype == "float32"
    assert not (project / "features" / "image_features.h5.partial").exists()
    _run(["git", "checkout", "params.yaml"], project)

