"""DVC stage ``extract``: image features of ``data`` with the ``extract`` backbone settings."""
from stages import load_params, run, stage_paths  # first: Ctrl-C while torch loads is one line

# isort: split
from pathlib import Path

import pipeline  # noqa: F401
from pipeline.config import ExtractConfig
from pipeline.distributed import extract_dataset


def main() -> None:
    paths = stage_paths("output")
    params = load_params("data", "extract")
    data = params["data"]
    splits = Path(data["splits"]) if data.get("splits") else None
    # DVC runs this stage when the data, code or settings changed, and keeps the old store (persist: true,
    # so a failed run never deletes it): extract anew into OUTPUT.partial (an interrupted run resumes)
    # and replace the store only once the new one is finished
    result = extract_dataset(data["dataset"], Path(data["root"]), splits, paths.output,
                             ExtractConfig(**params["extract"]), overwrite=True)
    print(result.summary())  # failures within extract.max_failures are recorded, not fatal: the stage succeeds


if __name__ == "__main__":
    run(main)
