"""Dense reference: torch.func jacrev / jacfwd (whichever needs fewer passes), materialising J."""
from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev, vmap


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
    J = vmap(jac)(x)
    return J.reshape(B, d_out, d_in)
