"""Thin DVC stage entry points: each takes the paths it reads and writes from its ``cmd`` in dvc.yaml
(every path a stage touches is visible there), reads its sections of params.yaml and calls into
pipeline/. A stage imports this package first, so that Ctrl-C while torch loads is one line, and runs
its ``main`` with :func:`run`."""
from __future__ import annotations

from pipeline import interrupt

interrupt.while_starting()

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.params import check_params  # noqa: E402
from pipeline.text_files import read_utf8  # noqa: E402


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: a :class:`PipelineError` ends it with its one line (``error: ...``, exit status
    1), Ctrl-C with one line and exit status 130 (its outputs are written under temporary names, so
    nothing half-written is left)."""
    interrupt.once_started()
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(interrupt.EXIT_INTERRUPTED)


def stage_paths(*names: str) -> argparse.Namespace:
    """The stage's ``--name PATH`` arguments (all required), as Paths."""
    parser = argparse.ArgumentParser()
    for name in names:
        parser.add_argument(f"--{name}", type=Path, required=True)
    return parser.parse_args()


def load_params(*sections: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml (DVC's parameter file) with the ``sections`` a stage reads checked; a bad one ends the
    stage with one line naming every problem."""
    try:
        params = yaml.safe_load(read_utf8(path, "parameters"))
        return check_params(params, sections, str(path))
    except yaml.YAMLError as e:
        sys.exit(f"error: {path}: cannot read the parameters ({str(e).splitlines()[0]})")
    except PipelineError as e:
        sys.exit(f"error: {e}")
