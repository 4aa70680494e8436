"""Runs ``pipeline.compat`` (the torchvision fix) the first time anything imports ``torchvision``.

Installed with the package as ``zsl_torchvision_hook.pth`` (see ``setup.py``), so Python imports this
module at start-up: ``import timm`` or ``import torchvision`` in a notebook works before (or without)
``import pipeline``. Only the standard library is imported here; torch and the package load when
torchvision is first imported, and nothing changes in a process that never imports it.
"""
import sys


class CompatBeforeTorchvision:
    """A meta path finder (duck-typed: ``importlib.abc`` would cost every start-up 20 ms) that runs
    :mod:`pipeline.compat` the first time ``torchvision`` is imported, then steps aside (the normal
    finders load torchvision)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            import pipeline.compat  # noqa: F401


if "torchvision" not in sys.modules:  # this module runs once per process (start-up hook or import pipeline)
    sys.meta_path.insert(0, CompatBeforeTorchvision())
