"""Files of a fetched repository snapshot, for the benchmarks that run authors' code on our features."""
from __future__ import annotations

import subprocess
from pathlib import Path


def copy_files(repo: Path, names: tuple[str, ...], into: Path) -> Path:
    """``names`` of ``repo`` (a checked-out folder, or a fetched git directory read with ``git show HEAD:``)
    written under ``into``, same relative paths; returns ``into``."""
    for name in names:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (repo / name).is_file():
            target.write_bytes((repo / name).read_bytes())
        else:
            target.write_bytes(subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{name}"],
                                              check=True, capture_output=True).stdout)
    return into
