"""Start-up time of the command line: how long a user waits for ``zsl predict`` on one image, an argument
error and ``--help``, each run as a fresh process, first (cold) and repeated (warm).

    python benchmarks/startup.py [--runs 5] [--model-file models/model.pt] [--image IMAGE]

Needs the default model of ``dvc repro`` (Quick start). "Cold" is the first run after the page cache was
dropped (``/proc/sys/vm/drop_caches``, when this user may write it: ``cold_cache`` says whether), warm the
median of the other runs. ``importtime``: the slowest top-level imports of ``zsl predict`` (``python -X
importtime``, cumulative ms). ``busy_cpu_s_others``: CPU seconds other processes used meanwhile (a busy
machine makes the times meaningless). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import busy_cpu_s  # noqa: E402


def drop_page_cache() -> bool:
    """Drop the OS page cache (root only): the next start reads its modules from disk. Whether it could."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})
    return time.perf_counter() - start, run


def slowest_imports(args: list[str], count: int = 8) -> dict[str, float]:
    """The ``count`` slowest modules imported directly by the command (``-X importtime``, cumulative ms)."""
    run = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "cli.py"), *args], cwd=ROOT,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})
    top = {}
    for line in run.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$", line)
        if match and len(match.group(2)) == 1:  # a top-level import (the commands import inside functions)
            top[match.group(3)] = round(int(match.group(1)) / 1000, 1)
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per command (the first one cold)")
    parser.add_argument("--model-file", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--image", type=Path, default=Path("data/synthetic/images/red_solid_square/0.png"))
    args = parser.parse_args()
    for path in (args.model_file, args.image):
        if not (ROOT / path).is_file():
            parser.error(f"{path}: not found; run the Quick start (dvc repro) first")
    commands = {
        "predict_one_image": ["predict", str(args.image), "--model-file", str(args.model_file), "--classes",
                              "red solid square,blue solid star"],
        "argument_error": ["train", "--model", "jont_gcn"],
        "help": ["predict", "--help"],
    }
    busy, own = busy_cpu_s(), _children_cpu_s()
    result: dict[str, object] = {}
    for name, command in commands.items():
        cold = drop_page_cache()
        times = []
        for _ in range(args.runs):
            seconds, run = timed(command)
            if (run.returncode != 0) != (name == "argument_error"):
                sys.exit(f"{name}: exit status {run.returncode}: {run.stderr.strip()[-300:]}")
            times.append(seconds)
        result[name] = {"cold_s": round(times[0], 2), "warm_s": round(statistics.median(times[1:]), 2),
                        "runs_s": [round(t, 2) for t in times]}
        result["cold_cache"] = cold
    result["busy_cpu_s_others"] = round(max(busy_cpu_s() - busy - (_children_cpu_s() - own), 0.0), 1)
    result["importtime_ms"] = slowest_imports(commands["predict_one_image"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
