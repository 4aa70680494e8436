"""``python cli.py ...``: the ``zsl`` command line (:mod:`pipeline.cli`) run from the repository root."""
from pipeline.cli import cli

if __name__ == "__main__":
    cli()
