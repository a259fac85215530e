"""Statistics behind the paper's MNIST claims (numpy, float64).

* :func:`pearson`: correlation of log vol and normalised entropy over pooled path points.
* :func:`auroc`: area under the ROC curve of a score for telling positives from negatives
  (Mann-Whitney U with mid-ranks for ties; equals ``sklearn.metrics.roc_auc_score``).
* :func:`boundary_mask` / :func:`boundary_stats`: grid points of a plane where the predicted class
  changes between 4-neighbours, and how much larger log vol is there than elsewhere.
* :func:`spectrum_stats`: summaries of metric eigenvalue spectra (top eigenvalue, effective rank).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length sequences; NaN if either is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def auroc(negatives, positives) -> float:
    """P(score of a random positive > score of a random negative) + 1/2 P(tie): the AUROC of the
    score for ranking ``positives`` above ``negatives`` (NaN if either group is empty)."""
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ValueError("auroc: scores contain NaN or Inf; drop the untrusted points first")
    r = rankdata(np.concatenate([pos, neg]))  # mid-ranks
    u = r[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def boundary_mask(classes, index, n: int) -> np.ndarray:
    """(P,) bool for plane points (flat indices ``index`` into an n x n grid, predicted ``classes``):
    True where a 4-neighbour that is also a plane point is predicted differently."""
    cls = np.full(n * n, -1, dtype=np.int64)
    idx = np.asarray(index, dtype=np.int64)
    cls[idx] = np.asarray(classes, dtype=np.int64)
    img = cls.reshape(n, n)
    edge = np.zeros((n, n), dtype=bool)
    for axis in (0, 1):
        a = np.take(img, range(n - 1), axis=axis)
        b = np.take(img, range(1, n), axis=axis)
        diff = (a != b) & (a >= 0) & (b >= 0)
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return edge.reshape(-1)[idx]


def boundary_stats(log10vol, classes, index, n: int) -> dict:
    """How strongly log10 vol concentrates at the plane's decision boundaries: ``excess`` = mean log10
    vol at boundary points minus elsewhere (decades; > 0 = larger at boundaries), ``auroc`` of log vol
    for boundary against other points, and the boundary fraction. NaN without a boundary."""
    v = np.asarray(log10vol, dtype=np.float64)
    m = boundary_mask(classes, index, n)
    if m.all() or not m.any():
        return {"excess": float("nan"), "auroc": float("nan"), "fraction": float(m.mean())}
    return {"excess": float(v[m].mean() - v[~m].mean()), "auroc": auroc(v[~m], v[m]), "fraction": float(m.mean())}


def spectrum_stats(eigenvalues) -> dict:
    """Summaries of one descending spectrum of metric eigenvalues: log10 of the largest and of the
    median, log10 vol (half the sum of log10 eigenvalues) and the effective rank exp(H(p)),
    p = lambda / sum(lambda)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lam = lam[lam > 0]
    p = lam / lam.sum()
    return {
        "log10_top": float(np.log10(lam[0])),
        "log10_median": float(np.log10(np.median(lam))),
        "log10vol": float(0.5 * np.log10(lam).sum()),
        "effective_rank": float(math.exp(-(p * np.log(p)).sum())),
    }
