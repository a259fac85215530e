"""Activation functions with the derivatives shallow-network geometry needs (sigma, sigma', sigma'').

Names denote the *plain* functions: ``"erf"`` is ``torch.erf(z)`` (not erf(z/sqrt 2)), ``"z^k"`` is
``z**k`` (not normalised). ``get(name_or_activation)`` returns an :class:`Activation`; unknown names
raise ``ValueError`` listing the known ones. Every function maps a tensor elementwise to a tensor of
the same shape and is differentiable by torch autograd (used for higher derivatives in quadrature).

``code`` is the integer the compiled and Triton kernels use to pick the activation (``KERNEL_CODES``);
monomials carry their power in ``power``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]

# activation ids shared with csrc/ops/shallow*.cpp, csrc/cuda/shallow*.cu and ops/shallow/triton.py
KERNEL_CODES = {"sigmoid": 0, "tanh": 1, "erf": 2, "gelu": 3, "softplus": 4, "sin": 5, "monomial": 6}

_SQRT_2PI_INV = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@dataclass(frozen=True)
class Activation:
    """sigma and its first two derivatives, each a tensor -> tensor elementwise function.

    ``code``/``power`` identify built-ins for the fused kernels (None for user activations, which
    only the torch backend runs).
    """

    name: str
    sigma: Fn
    d1: Fn
    d2: Fn
    code: int | None = None
    power: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.sigma(z)

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


# Saturated units matter for graded volume elements, so derivatives keep their relative accuracy
# for large |z|: sigma(z) (1 - sigma(z)) = sigma(z) sigma(-z), 1 - tanh^2 = cosh^-2.
def _sig_d1(z):
    return torch.sigmoid(z) * torch.sigmoid(-z)


def _sig_d2(z):
    sp, sm = torch.sigmoid(z), torch.sigmoid(-z)
    return sp * sm * (sm - sp)


def _tanh_d1(z):
    return torch.cosh(z) ** -2


def _tanh_d2(z):
    return -2 * torch.tanh(z) * torch.cosh(z) ** -2


def _erf_d1(z):
    return _TWO_OVER_SQRT_PI * torch.exp(-z * z)


def _erf_d2(z):
    return -2 * z * _erf_d1(z)


def _phi(z):
    return _SQRT_2PI_INV * torch.exp(-0.5 * z * z)


def _Phi(z):
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def _gelu(z):
    return z * _Phi(z)


def _gelu_d1(z):
    return _Phi(z) + z * _phi(z)


def _gelu_d2(z):
    return (2 - z * z) * _phi(z)


_BUILTIN = {
    "sigmoid": Activation("sigmoid", torch.sigmoid, _sig_d1, _sig_d2, KERNEL_CODES["sigmoid"]),
    "tanh": Activation("tanh", torch.tanh, _tanh_d1, _tanh_d2, KERNEL_CODES["tanh"]),
    "erf": Activation("erf", torch.erf, _erf_d1, _erf_d2, KERNEL_CODES["erf"]),
    "gelu": Activation("gelu", _gelu, _gelu_d1, _gelu_d2, KERNEL_CODES["gelu"]),
    "softplus": Activation("softplus", torch.nn.functional.softplus, torch.sigmoid, _sig_d1, KERNEL_CODES["softplus"]),
    "sin": Activation("sin", torch.sin, torch.cos, lambda z: -torch.sin(z), KERNEL_CODES["sin"]),
}

_MONO = re.compile(r"^\s*z\s*(?:\^|\*\*)\s*(\d+)\s*$")


def monomial(k: int) -> Activation:
    """sigma(z) = z**k (k >= 1), with sigma' = k z^(k-1), sigma'' = k(k-1) z^(k-2)."""
    if int(k) != k or k < 1:
        raise ValueError(f"monomial power must be an integer >= 1, got {k!r}")
    k = int(k)

    def s(z):
        return z**k

    def d1(z):
        return k * z ** (k - 1) if k > 1 else torch.ones_like(z)

    def d2(z):
        return k * (k - 1) * z ** (k - 2) if k > 2 else torch.full_like(z, float(k * (k - 1)))

    return Activation(f"z^{k}", s, d1, d2, KERNEL_CODES["monomial"], power=k)


def known_names() -> list[str]:
    return sorted(_BUILTIN) + ["z^k (k = 1, 2, 3, ...)"]


def get(activation) -> Activation:
    """Activation object for a name ("sigmoid", "tanh", "erf", "gelu", "softplus", "sin", "z^k") or
    an :class:`Activation` (returned unchanged)."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key in _BUILTIN:
            return _BUILTIN[key]
        m = _MONO.match(key)
        if m:
            return monomial(int(m.group(1)))
    raise ValueError(
        f"unknown activation {activation!r}; known: {', '.join(known_names())}, "
        "or a fastgeom.activations.Activation(name, sigma, d1, d2)"
    )
