"""Outputs written whole or not at all: the bytes go to ``<path>.partial``, then a rename."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


@contextlib.contextmanager
def written_whole(path: Path, what: str) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write ``what`` into; it is renamed to ``path`` when the block ends.

    If anything fails the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (full disk, read-only folder) becomes one line naming ``path``.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PipelineError(f"{path}: cannot write the {what} ({e.strerror or e}); {path} is unchanged") from None
        raise


def write_whole(path: Path, data: bytes | str, what: str) -> None:
    """Write ``data`` to ``path`` through :func:`written_whole`."""
    with written_whole(path, what) as partial:
        if isinstance(data, str):
            partial.write_text(data)
        else:
            partial.write_bytes(data)
