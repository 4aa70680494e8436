"""Outputs written whole or not at all: the bytes go to ``<path>.partial``, then a rename."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


def check_replaceable(path: Path, what: str) -> None:
    """Refuse an output ``path`` that is a symbolic link or exists as anything but a regular file (a FIFO, a
    device such as /dev/stdout's target, a folder): renaming a new file over it would replace the link or
    the special file itself, not write through it."""
    path = Path(path)
    if path.is_symlink():
        raise PipelineError(f"{path}: the {what} output is a symbolic link; give the path it points to, or another")
    if path.exists() and not path.is_file():
        raise PipelineError(f"{path}: the {what} output exists and is not a regular file (a folder, a FIFO or a "
                            "device); give a file path")


@contextlib.contextmanager
def written_whole(path: Path, what: str) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write ``what`` into; it is renamed to ``path`` when the block ends.

    If anything fails the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` (full disk, read-only folder) becomes one line naming ``path``.
    """
    path = Path(path)
    check_replaceable(path, what)
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
