"""``vmap`` over points or directions, falling back to a Python loop where a module has no batching rule.

``torch.func.vmap`` fails on some modules (``nn.GRU`` / ``nn.LSTM`` over a batch of points: "output with
shape [1, 4] doesn't match the broadcast shape [2, 1, 4]"; ops without a batching rule). ``vmap(fn)``
then runs ``fn`` once per entry of the mapped dimension and stacks the results, which gives the same
values (up to the BLAS blocking of a different batch size); it warns once per ``key`` naming the cause.
An error that the loop raises too is the model's own and propagates unchanged; out-of-memory errors
are never retried as a loop (the caller halves its batch instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .planner import is_oom


class BatchingFallbackWarning(UserWarning):
    """vmap failed on the model; a (slower) Python loop over the mapped dimension was used instead."""


_WARNED: set[str] = set()  # keys already warned about


def _loop(fn: Callable, in_dims, args: tuple, out_dims: int) -> Any:
    dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
    if len(dims) != len(args):
        raise ValueError(f"in_dims {in_dims!r} does not match the {len(args)} arguments")
    sizes = {a.shape[d] for a, d in zip(args, dims) if d is not None}
    if len(sizes) != 1:
        raise ValueError(f"vmap fallback: mapped dimensions have sizes {sorted(sizes)}; expected one common size")
    n = sizes.pop()
    outs = [fn(*[a if d is None else a.select(d, i) for a, d in zip(args, dims)]) for i in range(n)]
    flat0, spec = tree_flatten(outs[0])
    cols = [tree_flatten(o)[0] for o in outs]
    stacked = [
        torch.stack([c[j] for c in cols], dim=out_dims) if isinstance(flat0[j], torch.Tensor) else flat0[j]
        for j in range(len(flat0))
    ]
    return tree_unflatten(stacked, spec)


def vmap(fn: Callable, in_dims: int | tuple = 0, out_dims: int = 0, *, key: str | None = None) -> Callable:
    """``torch.func.vmap(fn, in_dims, out_dims)`` (tensor arguments; in_dims int or per-argument int/None),
    or a loop over the mapped dimension where vmap fails (warns once per ``key``)."""

    def run(*args):
        try:
            return torch.func.vmap(fn, in_dims, out_dims)(*args)
        except Exception as e:  # noqa: BLE001 - any vmap failure is retried as a loop, whose own error is the real one
            if is_oom(e):
                raise
            out = _loop(fn, in_dims, args, out_dims)
            tag = key or getattr(fn, "__qualname__", "fn")
            if tag not in _WARNED:
                warnings.warn(
                    f"torch.func.vmap failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    f"running a Python loop over the mapped dimension instead ({tag}; slower, same values)",
                    BatchingFallbackWarning,
                    stacklevel=2,
                )
                _WARNED.add(tag)
            return out

    return run


__all__ = ["BatchingFallbackWarning", "vmap"]
