"""Ctrl-C as one line for the command line and the DVC stages, whether it comes while torch loads or later."""
from __future__ import annotations

import os
import signal

EXIT_INTERRUPTED = 130


def _interrupted_while_starting(signum: int, frame: object) -> None:
    os.write(2, b"interrupted while starting\n")
    os._exit(EXIT_INTERRUPTED)


def while_starting() -> None:
    """From now until :func:`once_started`, Ctrl-C ends the process with one line at once (an exception raised
    during the imports can abort inside torch's C++ initialisers)."""
    signal.signal(signal.SIGINT, _interrupted_while_starting)


def once_started() -> None:
    """From now on Ctrl-C raises KeyboardInterrupt, for the running command to handle."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
