"""Pickles that users download or share, loaded without running their code.

``pickle.load`` calls whatever callables a file names, so a crafted file runs code on load. Every
pickle the project reads (class-name vectors, vector names, attribute-name vectors, COCO's split)
goes through :func:`load_pickle`, which admits only what such files legitimately hold: numpy arrays,
dtypes and scalars, lists, tuples, dicts (``OrderedDict`` too), sets, strings, bytes and numbers.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

_BUILTINS = ("list", "tuple", "dict", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex",
             "bool")
_NUMPY = [(f"numpy.{core}.{module}", name) for core in ("core", "_core")
          for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))]
ALLOWED = frozenset({("builtins", name) for name in _BUILTINS} | {("collections", "OrderedDict"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), *_NUMPY})


class _Refused(Exception):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """The object pickled in ``path``, refusing (one-line :class:`PipelineError` naming the file and the
    object) anything but arrays, numbers, strings and containers of them. Python 2 pickles of numpy
    arrays are read with ``latin1`` strings."""
    path = Path(path)
    for encoding in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as f:
                return _RestrictedUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except _Refused as e:
            raise PipelineError(f"{path}: refused to unpickle {e}: pickles may only hold arrays, numbers, strings, "
                                "lists and dicts (loading other objects can run code); convert it to .npy") from None
        except MemoryError:  # e.g. an array of a huge shape, asked for by the file
            raise PipelineError(f"{path}: cannot unpickle: it asks for more memory than there is (an array of a "
                                "huge shape?)") from None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as e:
            raise PipelineError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    raise PipelineError(f"{path}: cannot unpickle (undecodable strings)")
