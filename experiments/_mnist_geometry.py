"""Hidden-layer geometry of the MNIST net 784 -> n -> 10 by the closed-form shallow route.

The feature map is Phi(x) = sigma(W x + b) / sqrt(n) with W (n, d) = ``model.lin1.weight``, i.e.
``fastgeom.logvol(model, x, layer="act", normalize=True)``; :func:`logvol` gives the same numbers
without forming Jacobians:

* n <= d (the quick configuration n = d = 784, a local diffeomorphism, and the narrow tiny nets):
  diag(s) W / sqrt(n), s = sigma'(W x + b), has the non-zero singular values of W / sqrt(n) scaled
  by an invertible diagonal on its rows, so
      log vol(x) = sum_j log sigma'(z_j) + log pdet(W / sqrt n),
  pdet = product of the singular values of W / sqrt(n) (one pivoted QR per snapshot,
  ``fastgeom.linalg.factor``); log sigma' in log form (logsigmoid(z) + logsigmoid(-z)), so saturated
  units stay exact where the product sigma(z) sigma(-z) would underflow. O(n d) per point.
* n > d (the paper's n = 2000): ``fastgeom.shallow.log_volume_element`` (pivoted QR of
  diag(s) W / sqrt(n) per point, O(n d^2)), in chunks with a progress bar.

Spectra (:func:`metric_eigenvalues`) are the squared singular values of the same matrix.
``tests/test_mnist.py`` compares both branches with the general engine (``fastgeom.logvol``,
``method="dense"``) at odd sizes and at saturated arguments.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

import fastgeom as fg
from fastgeom import activations
from fastgeom.linalg import factor


def _weights(model):
    return model.lin1.weight.detach().to(torch.float64), model.lin1.bias.detach().to(torch.float64)


def _log_d1(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "sigmoid":
        return F.logsigmoid(z) + F.logsigmoid(-z)
    return torch.log(activations.get(activation).d1(z).abs())


_PDET_CACHE: dict = {}


def _log_pdet(weight: torch.Tensor):
    """log pdet(W / sqrt n) for W (n, d), n <= d, by pivoted QR (``fastgeom.linalg.factor``); None
    when W is rank-deficient or has values at rounding level. Cached for the current weights (the key
    includes the tensor's in-place version counter, so an optimiser step invalidates it)."""
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype)
    if key not in _PDET_CACHE:
        W = weight.detach().to(torch.float64)
        f = factor((W / math.sqrt(W.shape[0]))[None])
        ok = int(f.rank[0]) == W.shape[0] and int(f.n_rounding[0]) == 0
        _PDET_CACHE.clear()
        _PDET_CACHE[key] = f.logvol[0] if ok else None
    return _PDET_CACHE[key]


def route(model) -> str:
    """'factorised' (n <= d) or 'shallow-qr' (n > d): which branch :func:`logvol` takes."""
    n, d = model.lin1.weight.shape
    return "factorised" if n <= d else "shallow-qr"


def logvol(
    model, x: torch.Tensor, activation: str = "sigmoid", progress: bool = False, desc: str = "logvol", chunk: int = 64
) -> torch.Tensor:
    """(N,) natural-log volume element (pseudo-volume for n < d, MATH 2.3) of the normalised hidden
    layer at x (N, 784), float64."""
    W, b = _weights(model)
    x = x.reshape(x.shape[0], W.shape[1]).to(torch.float64)
    n, d = W.shape
    if n <= d:
        const = _log_pdet(model.lin1.weight)
        if const is not None:
            return _log_d1(torch.addmm(b, x, W.T), activation).sum(1) + const
        warnings.warn(
            f"W (n = {n}) is rank-deficient or has singular values at rounding level: the factorised "
            "volume does not apply; using fastgeom.shallow.log_volume_element per point",
            stacklevel=2,
        )
    from tqdm.auto import tqdm

    starts = range(0, x.shape[0], chunk)
    return torch.cat(
        [
            fg.shallow.log_volume_element(W, b, x[i : i + chunk], activation)
            for i in tqdm(starts, desc=desc, leave=False, disable=not progress or len(starts) < 2)
        ]
    )


def metric_eigenvalues(model, x: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """(N, min(n, d)) eigenvalues of the pullback metric of the normalised hidden layer at x,
    descending: squared singular values of diag(sigma'(z)) W / sqrt(n) by LAPACK (absolute accuracy
    eps * s_max, ample for spectra spanning a few decades; the driver checks half the sum of their logs
    against :func:`logvol`). ``fastgeom.spectrum``'s Jacobi SVD is relatively accurate but takes
    minutes per 784 x 784 Jacobian on a CPU."""
    W, b = _weights(model)
    x = x.reshape(x.shape[0], W.shape[1]).to(torch.float64)
    s = activations.get(activation).d1(torch.addmm(b, x, W.T))
    return torch.linalg.svdvals(s[:, :, None] * W / math.sqrt(W.shape[0])) ** 2
