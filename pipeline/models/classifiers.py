"""Linear classifiers of the seen classes on the cached features, which several models build on.

The backbone's own classifier rows when the feature store records its head and it covers every
seen class (the ImageNet protocol of GCNZ and DGP: the head was trained on far more images of those
classes than any zero-shot split holds), else one-vs-rest ridge classifiers fitted in closed form on
the seen classes' features (:func:`ridge_classifiers`). ``supervision`` (``auto`` | ``head`` | ``ridge``)
forces either. Only the rows of seen classes are ever read.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from pipeline.errors import PipelineError
from pipeline.models.base import Semantics, Split
from pipeline.models.memo import by_content

SUPERVISION = ("auto", "head", "ridge")


@by_content(6)  # selection: one matrix per validation fold (5), then trainval
def gram_eigh(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The eigendecomposition of the smaller Gram matrix of ``x`` [N, D], in float64: ``(E, U, Xᵀ U)`` of
    ``X Xᵀ = U E Uᵀ`` when N < D, else ``(E, Q, None)`` of ``Xᵀ X = Q E Qᵀ``. Kept by content: the only
    step of a ridge regression cubic in N or D, the same for every regularisation strength."""
    x64 = np.asarray(x, dtype=np.float64)
    if len(x64) < x64.shape[1]:
        values, u = scipy.linalg.eigh(x64 @ x64.T)
        return values, u, x64.T @ u
    values, q = scipy.linalg.eigh(x64.T @ x64)
    return values, q, None


def ridge_solution(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """``(Xᵀ X + α I)⁻¹ Xᵀ Y`` [D, K] in float64 for ``x`` [N, D], ``y`` [N, K], through :func:`gram_eigh`:
    ``Xᵀ U (E + α)⁻¹ Uᵀ Y`` when N < D, else ``Q (E + α)⁻¹ Qᵀ Xᵀ Y``. Raises ``LinAlgError`` when
    ``Xᵀ X + α I`` is singular."""
    values, basis, x_basis = gram_eigh(x)
    shifted = values + alpha
    if shifted.min() <= 1e-12 * max(values.max(), 1.0):
        raise np.linalg.LinAlgError("X'X + alpha I is singular")
    y = np.asarray(y, dtype=np.float64)
    if x_basis is not None:
        return x_basis @ ((basis.T @ y) / shifted[:, None])
    return basis @ ((basis.T @ (np.asarray(x, dtype=np.float64).T @ y)) / shifted[:, None])


def ridge_classifiers(features: np.ndarray, positions: np.ndarray, n_seen: int, ridge: float) -> np.ndarray:
    """One-vs-rest ridge classifiers [n_seen, D + 1] (weights, then bias) of the seen classes, in closed form.

    ``W = (X̃ᵀ X̃ + α I)⁻¹ X̃ᵀ Y`` (:func:`ridge_solution`) with X̃ the features plus a column of ones, Y
    the 0/1 one-hot labels and ``α = ridge · trace(X̃ᵀ X̃) / dim`` (scale-free: ``ridge`` is relative to
    the mean feature energy). The bias is regularised like the weights. A seen class without images
    gets the row that predicts 0 for every image.
    """
    x = np.hstack([np.asarray(features, dtype=np.float64), np.ones((len(features), 1))])
    y = np.zeros((len(x), n_seen))
    y[np.arange(len(x)), positions] = 1.0
    alpha = ridge * float(np.einsum("ij,ij->", x, x)) / x.shape[1]
    return ridge_solution(x, y, alpha).T.astype(np.float32)


def head_rows(model: str, seen: np.ndarray, semantics: Semantics, dim: int, supervision: str) -> np.ndarray | None:
    """The backbone's classifier rows [S, D + 1] of the ``seen`` classes when ``supervision`` takes them
    (``head``, or ``auto`` when the store's head covers every seen class with rows for ``dim``-d
    features), else None (``ridge``, or ``auto`` without a usable head)."""
    if supervision not in SUPERVISION:
        raise PipelineError(f"{model}: supervision {supervision!r} unknown; use one of {SUPERVISION}")
    rows = semantics.classifiers[seen] if semantics.classifiers is not None else None
    has_head = rows is not None and bool(np.isfinite(rows).all())
    if supervision == "head" and not has_head:
        missing = "records no classifier head" if rows is None else \
            f"has no classifier row for {int((~np.isfinite(rows).all(1)).sum())} of the {len(seen)} seen classes"
        raise PipelineError(f"{model}: supervision=head but the feature store {missing}; use supervision=ridge "
                            "(or auto), or extract with a backbone whose classifier covers the seen classes")
    if supervision == "ridge" or not has_head:
        return None
    assert rows is not None
    if rows.shape[1] != dim + 1:
        raise PipelineError(f"{model}: classifier rows are {rows.shape[1] - 1}-d but the features {dim}-d; "
                            "rebuild the feature store")
    return rows.astype(np.float32)


def seen_classifiers(model: str, train: Split, positions: np.ndarray, seen: np.ndarray, semantics: Semantics,
                     supervision: str, ridge: float) -> tuple[np.ndarray, str]:
    """The classifiers [S, D + 1] (weights, then bias) of the ``seen`` classes and which supervision gave
    them: ``head`` (:func:`head_rows`) or ``ridge`` (fitted with ``ridge``)."""
    rows = head_rows(model, seen, semantics, train.features.shape[1], supervision)
    if rows is not None:
        return rows, "head"
    return ridge_classifiers(train.features, positions, len(seen), ridge), "ridge"


def with_classifier(rows: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` [S, D + 1] and ``seen`` [S] restricted to the seen classes that have a classifier: ridge
    supervision gives a class without images (ImageNet's protocol lists such training classes) an
    all-zero row, which is no classifier to regress or to take probabilities from."""
    keep = np.abs(rows).max(axis=1) > 0
    return rows[keep], np.asarray(seen)[keep]


def with_bias_input(features: np.ndarray) -> np.ndarray:
    """[N, D + 1] float32: the features and a trailing 1, the input of a ``[weight, bias]`` row."""
    x = np.asarray(features, dtype=np.float32)
    return np.hstack([x, np.ones((len(x), 1), np.float32)])
