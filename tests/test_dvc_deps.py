"""dvc.yaml never reports stale results: every module a stage runs (its imports, transitively, lazy
ones included) is among that stage's deps, so editing it reruns the stage."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of in-repository module ``name`` (``pipeline.x``, ``stages.x``, ``zsl_torchvision_hook``),
    else None."""
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """In-repository modules imported anywhere in ``path`` (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if module_file(n)}


def closure(module: str) -> set[Path]:
    """Files run when ``module`` runs: its imports, their imports, and every package ``__init__`` on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for package in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if package not in seen and module_file(package):
                seen.add(package)
                todo.extend(imported_modules(module_file(package)))  # type: ignore[arg-type]
    return {module_file(name) for name in seen}  # type: ignore[misc]


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_runs_is_one_of_its_deps(stage):
    spec = STAGES[stage]
    module = spec["cmd"].split("-m ", 1)[1].split()[0]
    deps = [REPO / d for d in spec["deps"] if "${" not in d]
    missing = sorted(str(f.relative_to(REPO)) for f in closure(module)
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage {stage} misses deps: {missing}"


def test_no_module_of_the_library_imports_itself_back():
    graph = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(path) if m != name and not name.startswith(m + ".")}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return seen

    cyclic = sorted(name for name in graph if name in reaches(name))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_every_dvc_override_the_readme_shows_is_accepted_by_dvc(tmp_path):
    """Each ``-S key=value`` of the README and params.yaml applies to params.yaml as ``dvc exp run -S`` applies
    it (DVC's Hydra grammar: a key the section lacks needs ``++``; the model sections hold every key of their
    model, null for its default, so none does), and lands on a parameter the stages read."""
    import re
    import shutil

    from dvc.utils.hydra import apply_overrides

    from pipeline.models import MODELS, make_model

    documented = (REPO / "README.md").read_text() + (REPO / "params.yaml").read_text()
    overrides = sorted(set(re.findall(r"-S (\+*[a-z_]+\.[a-z_]+=[^\s`,]+)", documented)))
    assert len(overrides) >= 8 and {"eszsl.gamma=1.0", "msdn.distill_weight=0"} <= set(overrides)
    params = tmp_path / "params.yaml"
    for override in overrides:
        shutil.copyfile(REPO / "params.yaml", params)
        apply_overrides(params, [override])  # raises as `dvc exp run` refuses
        section, key = override.lstrip("+").split("=")[0].split(".")
        value = yaml.safe_load(params.read_text())[section][key]
        if section not in ("extract", "synthetic", "train", "evaluate"):  # a model section: one of its hyperparameters
            assert key in make_model(section).hparams, override
        assert value is not None, override
    sections = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {name: sorted(sections[name]) for name in MODELS} == {name: sorted(m.defaults) for name, m in MODELS.items()}
    assert all(value is None for name in MODELS for value in sections[name].values())
