"""What an exact computation reports besides its values: ``Diagnostics`` and the warnings that name points."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch


class RankDeficiencyWarning(UserWarning):
    """Some points have fewer non-zero singular values than min(d_in, d_out)."""


class PrecisionWarning(UserWarning):
    """Some values may not be resolved in the precision the Jacobian was computed in."""


class NonFiniteWarning(UserWarning):
    """Some points gave NaN or Inf (input overflow in the compute dtype, features or Jacobian): NaN there."""


@dataclass(frozen=True)
class Diagnostics:
    """Per-point diagnostics of an exact logvol / spectrum computation (tensors have shape (B,))."""

    rank: torch.Tensor  # singular values kept per point
    rank_structural: torch.Tensor  # min(#non-zero rows, #non-zero columns) of J
    full_rank: int  # min(d_in, d_out), less the sphere target's known null direction
    cond_est: torch.Tensor  # max|R_ii| / min|R_ii| of the pivoted QR over kept values
    n_rounding: torch.Tensor  # kept values at the rounding level of the compute dtype
    n_dropped: torch.Tensor  # values dropped at the rounding level (default rank_tol=None)
    dynamic_pivoting: torch.Tensor  # refactored with dynamic column pivoting
    nonfinite: torch.Tensor  # bool: the point's value is NaN (non-finite input cast, feature or J)
    method: str  # the engine that ran: "dense" | "streamed" | "linearized"
    mode: str  # "reverse" / "forward" / "jacrev" / "jacfwd"
    compute_dtype: torch.dtype
    d_in: int
    d_out: int
    chunk: int | None = None  # directions per pass at the end of the run
    points_per_batch: int | None = None
    events: tuple = ()  # out-of-memory halvings, in order
    reason: str = ""  # why this engine ran
    backends: dict = field(default_factory=dict)  # op -> implementation that ran, e.g. {"qrcp": "torch"}


def fmt_points(idx: list, vals: list | None = None, limit: int = 10, label: str = "rank") -> str:
    """'3, 7 (rank 2), ...' for the first ``limit`` points."""
    items = [f"{i}" if vals is None else f"{i} ({label} {v})" for i, v in zip(idx, vals or [None] * len(idx))]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def warn(diag: Diagnostics, rank_tol, causes: dict[int, str] | None = None, stacklevel: int = 4) -> None:
    """One warning per kind: non-finite points, rank below full, rounding-level values kept."""
    bad = diag.nonfinite.nonzero().flatten().tolist()
    if bad:
        causes = causes or {}
        warnings.warn(
            f"{len(bad)} point(s) gave non-finite values and are NaN: "
            f"{fmt_points(bad, [causes.get(i, 'NaN/Inf in the Jacobian') for i in bad], label='cause:')}",
            NonFiniteWarning,
            stacklevel=stacklevel,
        )
    ok = ~diag.nonfinite
    low = ((diag.rank < diag.full_rank) & ok).nonzero().flatten().tolist()
    if low:
        dropped = diag.n_dropped[low]
        note = ""
        if bool((dropped > 0).any()):
            note = (
                f" {int((dropped > 0).sum())} of them had singular values at the rounding level of "
                f"{diag.compute_dtype} ({int(dropped.sum())} in all), zero in exact arithmetic up to that "
                "precision, which were dropped (the default rank_tol=None; dtype=torch.float64 resolves more, "
                "rank_tol=0.0 keeps them)."
            )
        warnings.warn(
            f"{len(low)} point(s) have rank below min(d_in, d_out) = {diag.full_rank}: "
            f"{fmt_points(low, diag.rank[low].tolist())}. Their log volume is the sum over the kept singular "
            "values only (zero rows/columns of J, e.g. dead units, are removed"
            + (f"; rank_tol={rank_tol} dropped more" if rank_tol else "")
            + ")."
            + note,
            RankDeficiencyWarning,
            stacklevel=stacklevel,
        )
    rnd = ((diag.n_rounding > 0) & ok).nonzero().flatten().tolist()
    if rnd:
        warnings.warn(
            f"{len(rnd)} point(s) kept singular values at the rounding level of {diag.compute_dtype} "
            f"(numerically rank-deficient, so the result may not be resolved in this precision): "
            f"{fmt_points(rnd, diag.n_rounding[rnd].tolist(), label='count')} (count of such values in brackets). "
            "Criterion: |R_ii| <= max(m, n) * eps * ||pivot column|| in the pivoted QR of J. Compute in float64 "
            "(dtype=torch.float64), or drop them with rank_tol=None (the default) or rank_tol=t.",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
