"""Brute-force curvature of any smooth metric by float64 automatic differentiation (MATH.md 10).

The metric is given as a function ``metric_fn(x) -> (d, d)`` of one point ``x`` (d,), written with
torch operations that ``torch.func`` can differentiate twice (no in-place ops, no ``.item()``).
Convention (MATH 1): Gamma_{k,ij} = (d_i g_kj + d_j g_ki - d_k g_ij)/2,
R^a_bcd = d_c Gamma^a_db - d_d Gamma^a_cb + Gamma^a_ce Gamma^e_db - Gamma^a_de Gamma^e_cb,
R_bd = R^a_bad, R = g^bd R_bd; the round m-sphere of radius rho has R = m(m-1)/rho^2.

This is the independent oracle for the closed forms (fastgeom.shallow, fastgeom.nngp) and the
route for metrics whose derivative is not totally symmetric (NTK metric, deep nets). Cost
O(d^4) per point plus two forward-mode Jacobians of the metric; meant for validation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacfwd, vmap

from .engine.guards import ad_guards

MetricFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["metric_derivatives", "christoffel", "riemann_tensor", "ricci_tensor", "ricci_scalar"]


def _check(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}; use x[None] for a single point")
    return x.to(torch.float64)


def metric_derivatives(metric_fn: MetricFn, x: torch.Tensor):
    """g (N, d, d), dg (N, d, d, d) with dg[..., a, b, c] = d_c g_ab, ddg (N, d, d, d, d) with
    ddg[..., a, b, c, e] = d_e d_c g_ab."""
    x = _check(x)
    with ad_guards():  # saturation-stable activations; layer_norm & co. whose nested forward mode torch gets wrong
        g = vmap(metric_fn)(x)
        dg = vmap(jacfwd(metric_fn))(x)
        ddg = vmap(jacfwd(jacfwd(metric_fn)))(x)
    return g, dg, ddg


def _pieces(metric_fn, x):
    g, dg, ddg = metric_derivatives(metric_fn, x)
    gi = torch.linalg.inv(g)
    # Gamma_{k,ij} and its derivative d_c Gamma_{k,ij}
    Gl = 0.5 * (dg.permute(0, 1, 3, 2) + dg - dg.permute(0, 3, 1, 2))  # [k,i,j] = (dg[k,j,i]+dg[k,i,j]-dg[i,j,k])/2
    dGl = 0.5 * (ddg.permute(0, 1, 3, 2, 4) + ddg - ddg.permute(0, 3, 1, 2, 4))  # [k,i,j,c]
    Gam = torch.einsum("nlk,nkij->nlij", gi, Gl)
    dGam = -torch.einsum("nlp,npqc,nqk,nkij->nlijc", gi, dg, gi, Gl) + torch.einsum(
        "nlk,nkijc->nlijc", gi, dGl
    )  # d_c Gamma^l_ij
    return g, gi, Gam, dGam


def christoffel(metric_fn: MetricFn, x: torch.Tensor) -> torch.Tensor:
    """(N, d, d, d) Christoffel symbols of the second kind Gamma^l_ij, indexed [n, l, i, j]."""
    return _pieces(metric_fn, x)[2]


def riemann_tensor(metric_fn: MetricFn, x: torch.Tensor) -> torch.Tensor:
    """(N, d, d, d, d) Riemann tensor R^a_bcd, indexed [n, a, b, c, d]."""
    _, _, Gam, dGam = _pieces(metric_fn, x)
    t1 = torch.einsum("nadbc->nabcd", dGam)  # d_c Gamma^a_db
    t2 = torch.einsum("nacbd->nabcd", dGam)  # d_d Gamma^a_cb
    t3 = torch.einsum("nace,nedb->nabcd", Gam, Gam)
    t4 = torch.einsum("nade,necb->nabcd", Gam, Gam)
    return t1 - t2 + t3 - t4


def ricci_tensor(metric_fn: MetricFn, x: torch.Tensor) -> torch.Tensor:
    """(N, d, d) Ricci tensor R_bd = R^a_bad."""
    return torch.einsum("nabad->nbd", riemann_tensor(metric_fn, x))


def ricci_scalar(metric_fn: MetricFn, x: torch.Tensor) -> torch.Tensor:
    """(N,) Ricci scalar R = g^bd R_bd (textbook sign: round 2-sphere +2/rho^2)."""
    x = _check(x)
    gi = torch.linalg.inv(vmap(metric_fn)(x))
    return torch.einsum("nbd,nbd->n", gi, ricci_tensor(metric_fn, x))
