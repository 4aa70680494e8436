"""Read access to the semantics file written by :mod:`pipeline.semantics.build` (schema there)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.errors import PipelineError
from pipeline.hdf5 import decoded, open_for_reading, strings


class SemanticsFile:
    """Class semantics of one dataset; arrays come back as float32 numpy arrays."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._f = open_for_reading(self.path, "semantics file", "zsl semantics ...")
        if "classes" not in self._f or "class_texts" not in self._f:
            raise PipelineError(f"{self.path}: not a semantics file; build it with: python cli.py semantics ...")

    def __enter__(self) -> SemanticsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    @property
    def classes(self) -> list[str]:
        return strings(self._f["classes"])

    @property
    def class_texts(self) -> list[str]:
        return strings(self._f["class_texts"])

    def has(self, name: str) -> bool:
        """Whether the part ``name`` (``attributes``, ``text/clip``, ``attribute_text``, ``graph``) was built."""
        return name in self._f

    def _group(self, name: str) -> h5py.Group:
        if name not in self._f:
            raise PipelineError(f"{self.path}: no {name!r}; add it to the semantics settings and rebuild")
        return self._f[name]

    def attributes(self) -> tuple[np.ndarray, list[str]]:
        """Class-attribute matrix [C, A] and attribute names."""
        g = self._group("attributes")
        return g["values"][:].astype(np.float32), strings(g["names"])

    def text(self, encoder: str) -> np.ndarray:
        """Class-name embeddings [C, E] of ``encoder`` (clip, minilm, glove)."""
        return self._group(f"text/{encoder}")["values"][:].astype(np.float32)

    @property
    def text_encoders(self) -> list[str]:
        return list(self._f.get("text", {}))

    def attribute_text(self) -> np.ndarray:
        """Attribute-name embeddings [A, E]."""
        return self._group("attribute_text")["values"][:].astype(np.float32)

    def graph(self) -> dict[str, Any]:
        """The knowledge graph: wnids, names, n_classes, edges (child -> parent), ancestor edges/distances,
        node vectors and ``node_text``, the encoder that made them (None in files of older versions)."""
        g = self._group("graph")
        wnids = strings(g["wnids"])
        edges = g["edges"][:]
        return {
            "wnids": wnids,
            "names": strings(g["names"]),
            "n_classes": int(g.attrs["n_classes"]),
            "edges": edges,
            "ancestor_edges": g["ancestor_edges"][:],
            "ancestor_distance": g["ancestor_distance"][:],
            "node_vectors": g["node_vectors"][:].astype(np.float32),
            "node_text": g.attrs.get("node_text"),
        }

    def config(self) -> dict[str, Any]:
        """The settings the file was built with (:class:`pipeline.semantics.build.SemanticsConfig` fields)."""
        return decoded(self._f.attrs).get("config", {})

    def provenance(self, group: str) -> dict[str, Any]:
        """What made ``group`` (e.g. ``attributes``, ``text/clip``, ``graph``)."""
        return decoded(self._group(group).attrs)

    def describe(self) -> str:
        """Human-readable summary of every group, its shape and provenance."""
        lines = [f"{self.path}", f"  classes: {len(self.classes)}"]

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset) and name not in ("classes", "class_texts"):
                lines.append(f"  {name:28s} {str(obj.shape):16s} {obj.dtype}")
            elif isinstance(obj, h5py.Group):
                meta = {k: v for k, v in decoded(obj.attrs).items() if k != "inputs"}
                if meta:
                    shown = {k: (f"{len(v)} items" if isinstance(v, list) and len(v) > 8 else v) for k, v in meta.items()}
                    lines.append(f"  {name}: {shown}")

        self._f.visititems(visit)
        return "\n".join(lines)
