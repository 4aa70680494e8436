"""The schema of ``params.yaml``: every section, key, type and range, checked once where it is read.

:func:`check_params` reports every problem of the sections a stage reads in one line
(``params.yaml: train.val_fraction: 1.5 is not a number in (0, 1); trian: unknown section (did you
mean train?)``) and returns them with numbers that YAML 1.1 reads as text (``1e-3``) turned into
numbers. The ``model`` and its section are checked by the models themselves when the train stage
builds one (:func:`pipeline.models.base.typed_hparams`), so that this module stays below them.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.choices import BACKBONE_NAMES, DATASETS, DTYPES, is_backbone
from pipeline.errors import PipelineError

Check = Callable[[Any], tuple[bool, Any, str]]  # value -> (ok, value to use, what it should be)


def _text(optional: bool = False) -> Check:
    return lambda v: ((v is None and optional) or isinstance(v, str), v, "text" + (" or null" if optional else ""))


def _choice(*choices: str) -> Check:
    return lambda v: (v in choices, v, f"one of {', '.join(choices)}")


def _backbone(v: Any) -> tuple[bool, Any, str]:
    return is_backbone(v), v, f"one of {BACKBONE_NAMES}"


def _flag(v: Any) -> tuple[bool, Any, str]:
    return isinstance(v, bool), v, "true or false"


def _flag_or_null(v: Any) -> tuple[bool, Any, str]:
    return v is None or isinstance(v, bool), v, "true, false or null"


def _whole(least: int, optional: bool = False) -> Check:
    def check(v: Any) -> tuple[bool, Any, str]:
        ok = (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool) and v >= least)
        return ok, v, f"a whole number >= {least}" + (" or null" if optional else "")
    return check


def _number(low: float, high: float = math.inf, open_low: bool = False) -> Check:
    def check(v: Any) -> tuple[bool, Any, str]:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (low < v if open_low else low <= v) and v < high
        bounds = f"in ({low}, {high})" if open_low else (f">= {low}" if high == math.inf else f"in [{low}, {high})")
        return ok, v, f"a number {bounds}"
    return check


def _list(item: Check, example: str) -> Check:
    def check(v: Any) -> tuple[bool, Any, str]:
        ok = isinstance(v, list) and all(item(x)[0] for x in v)
        return ok, v, f"a list, e.g. {example}"
    return check


SCHEMA: dict[str, dict[str, Check]] = {
    "data": {"dataset": _choice(*DATASETS), "root": _text(), "splits": _text(optional=True)},
    "synthetic": {"images_per_class": _whole(2), "image_size": _whole(16), "seed": _whole(0), "multilabel": _flag},
    "extract": {"backbone": _backbone, "pretrained": _text(),
                "image_size": _whole(16, optional=True), "grid": _flag, "mid_grid": _flag_or_null,
                "dtype": _choice(*DTYPES),
                "batch_size": _whole(1, optional=True), "workers": _whole(0), "device": _text(),
                "max_failures": _number(0),
                "merge": _flag},
    "semantics": {"attributes": _text(optional=True), "attribute_key": _text(), "attribute_names": _text(optional=True),
                  "normalisation": _choice("l2", "none"), "text": _list(_text(), "[minilm, glove]"),
                  "vector_names": _text(optional=True), "clip_model": _text(optional=True),
                  "clip_pretrained": _text(optional=True),
                  "templates": _text(), "attribute_vectors": _text(optional=True), "graph": _choice("none", "wordnet"),
                  "wnids": _text(optional=True), "graph_text": _text(), "glosses": _flag,
                  "graph_links": _choice("hypernyms+instances", "hypernyms")},
    "train": {"source": _text(), "seed": _whole(0), "select": _flag, "val_fraction": _number(0, 1, open_low=True),
              "val_folds": _whole(1, optional=True), "device": _text(), "clip_features": _text(optional=True)},
    "evaluate": {"candidate_sets": _text(optional=True), "ks": _list(_whole(1), "[1, 5]"),
                 "tag_ks": _list(_whole(1), "[3, 5]")},
}


def check_params(params: Any, sections: Iterable[str], source: str = "params.yaml") -> dict[str, Any]:
    """``params`` with its ``sections`` checked against :data:`SCHEMA` (module docstring; the section
    ``model``: a model name whose own section, if any, holds keys); a top-level name close to a section's
    (``trian``) is reported as misspelt."""
    if not isinstance(params, dict):
        raise PipelineError(f"{source}: expected sections (data:, extract:, ...), got {type(params).__name__}")
    problems, out = [], dict(params)
    for name in params:
        close = difflib.get_close_matches(str(name), [*SCHEMA, "model"], n=1, cutoff=0.75)
        if name not in SCHEMA and name != "model" and close:
            problems.append(f"{name}: unknown section (did you mean {close[0]}?)")
    for name in sections:
        if name == "model":  # the model's name and its section; their keys are the model's to check
            model = params.get("model")
            if not isinstance(model, str) or not model:
                problems.append("model: missing" if model is None else f"model: expected a model name, got {model!r}")
            elif not isinstance(params.get(model) or {}, dict):
                problems.append(f"{model}: expected keys (hyperparameters), got {params[model]!r}")
            else:  # null: the model's default (a searched key then chosen on validation), so not passed on
                out[model] = {k: v for k, v in (params.get(model) or {}).items() if v is not None}
            continue
        keys, section = SCHEMA[name], params.get(name)
        if not isinstance(section, dict):
            problems.append(f"{name}: missing section" if section is None else f"{name}: expected keys, got {section!r}")
            continue
        out[name] = dict(section)
        for key in section:
            if key not in keys:
                close = difflib.get_close_matches(str(key), list(keys), n=1)
                problems.append(f"{name}.{key}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
        for key, check in keys.items():
            if key not in section:
                problems.append(f"{name}.{key}: missing")
                continue
            ok, out[name][key], should = check(section[key])
            if not ok:
                problems.append(f"{name}.{key}: {section[key]!r} is not {should}")
    if problems:
        raise PipelineError(f"{source}: {'; '.join(problems)}")
    return out
