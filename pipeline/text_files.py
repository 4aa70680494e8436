"""Reading a user's small text files (lists, tables, JSON, params.yaml): UTF-8 whatever the locale, and a
byte that is not UTF-8 is one line naming the file's line."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError


def read_utf8(path: Path, what: str) -> str:
    """The text of ``path``, a ``what`` ("unseen-class list"), decoded as UTF-8; an unreadable file or a byte
    that is not UTF-8 is a :class:`PipelineError` naming the file (and the line)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PipelineError(f"{path}:{line}: not UTF-8 text ({e.reason}); save the {what} as UTF-8") from e
