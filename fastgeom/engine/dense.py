"""Dense reference: torch.func jacrev / jacfwd (whichever needs fewer passes), materialising J.

The map over points is ``batching.vmap`` (a loop where a module has no batching rule, e.g. nn.GRU),
run under ``guards.ad_guards`` (forward AD through attention)."""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev

from .batching import vmap
from .guards import ad_guards


def jacobian_dense(fmap, x: torch.Tensor, d_out: int, forward: bool | None = None) -> torch.Tensor:
    """J (B, d_out, d_in) of fmap at every point of x (B, *input_shape), in fmap's dtype.

    ``forward``: jacfwd (True) or jacrev (False); default whichever needs fewer passes."""
    B = x.shape[0]
    d_in = x[0].numel()
    if forward is None:
        forward = d_out > d_in

    def f1(xi):
        return fmap(xi[None])[0]

    jac = jacfwd(f1) if forward else jacrev(f1)
    with ad_guards():
        J = vmap(jac, key="dense: vmap over points")(x)
    return J.reshape(B, d_out, d_in)
