"""Each default is written once: params.yaml (the DVC job), the command line and the Python API agree."""
from __future__ import annotations

import inspect
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from cli import cli
from pipeline import api
from pipeline.config import EVALUATE, EXTRACT, TRAIN, ExtractConfig
from pipeline.semantics.build import SemanticsConfig

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def _cli_defaults(command: str) -> dict[str, object]:
    defaults = {}
    for p in cli.commands[command].params:
        value = p.default
        if isinstance(value, str) and value.replace(",", "").isdigit():  # --ks 1,2,5: parsed by a callback
            value = tuple(int(k) for k in value.split(","))
        defaults[p.name] = value
    return defaults


def test_extract_has_one_source_of_defaults():
    names = {f.name for f in fields(ExtractConfig)}
    assert PARAMS["extract"] == asdict(EXTRACT)
    cli_defaults = _cli_defaults("extract")
    assert {k: cli_defaults[k] for k in names} == asdict(EXTRACT)
    assert not names & set(inspect.signature(api.extract).parameters)  # the API takes ExtractConfig's fields


def test_train_has_one_source_of_defaults():
    settings = {("source" if k == "semantics" else k): v for k, v in asdict(TRAIN).items()}  # --source, train.source
    assert {k: v for k, v in PARAMS["train"].items() if k != "clip_features"} == settings
    cli_defaults = _cli_defaults("train")
    api_defaults = {k: p.default for k, p in inspect.signature(api.train).parameters.items()}
    assert {k: cli_defaults[k] for k in settings} == {k: api_defaults[k] for k in settings} == settings
    assert PARAMS["model"] == api_defaults["model"]  # the model dvc repro and api.train train (the CLI asks for one)


def test_semantics_cli_defaults_are_semantics_config_and_params_differ_only_for_the_synthetic_job():
    config = asdict(SemanticsConfig())
    cli_defaults = _cli_defaults("semantics")
    for key, value in config.items():
        if key in cli_defaults and key != "text":  # --text is a repeatable option: () unless given
            assert cli_defaults[key] == value, key
    job = {"attributes": "synthetic", "text": ["minilm", "glove"], "attribute_vectors": "minilm"}  # the synthetic run's
    assert {k: v for k, v in PARAMS["semantics"].items() if v != config[k] and not (k == "text" and v == [])} == job


def test_evaluate_has_one_source_of_defaults():
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in PARAMS["evaluate"].items()} == asdict(EVALUATE)
    cli_defaults = _cli_defaults("evaluate")
    api_defaults = {k: p.default for k, p in inspect.signature(api.evaluate).parameters.items()}
    assert {k: cli_defaults[k] for k in asdict(EVALUATE)} == {k: api_defaults[k] for k in asdict(EVALUATE)} == asdict(EVALUATE)
