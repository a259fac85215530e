"""Saturation-stable derivatives of the smooth activations, for every autograd pass fastgeom runs.

torch's autograd formulas cancel where an activation saturates: sigmoid' is computed as y (1 - y)
and tanh' as 1 - y^2 from the output y, which rounds to 1 (or -1), so the derivative loses its
digits long before it underflows (float64 at z = 36: sigmoid' 4e-2 relative error, tanh' all of it
from |z| ~ 19; float32 from |z| ~ 9 for tanh, ~ 12 for sigmoid). The second derivatives (the
curvature routes differentiate twice) cancel for SiLU, logsigmoid, softplus and Mish too (1 -
sigmoid, 1 - tanh^2 of the softplus), and GELU's first derivative loses its Phi(z) term (relative
1/z^2) where 1 + erf rounds to 0; the tanh approximation of GELU cancels in value and derivative.

``stable_activations()`` is a ``TorchFunctionMode`` that routes these calls (``apply``) two ways:

- first order (one torch.func level, or plain autograd, double backward included): ``_Act``, an
  ``autograd.Function`` whose value is torch's kernel and whose backward / jvp multiply by the
  derivative written in stable plain ops (sigmoid' = t / (1 + t)^2 with t = exp(-|z|), never y (1 - y);
  tanh' = 4 t / (1 + t)^2 with t = exp(-2|z|)). It saves z only, as torch saves one tensor, and costs
  a few elementwise ops on the point batch per backward;
- nested differentiation (two or more torch.func jvp / grad levels, as in the curvature routes):
  compositions of plain torch ops (``exp`` of a non-positive argument, ``reciprocal``, ``log1p``,
  ``erfc``, products, sums of like-signed terms, ``where``) whose own autograd formulas keep relative
  accuracy at every order: sigmoid(z) = 1 / (1 + t) (z >= 0) or t / (1 + t) (z < 0); tanh(z) = (1 - t) /
  (1 + t) for |z| >= 1/2 (torch's tanh below, where 1 - y^2 >= 0.78 does not cancel); softplus(w) =
  max(w, 0) + log1p(exp(-|w|)); SiLU, logsigmoid, Mish, GELU from these. An autograd.Function cannot
  serve here: torch's forward mode over its jvp rule silently returns zero higher derivatives
  (pytorch/pytorch#197867). These save 2-3 tensors per activation instead of one.

Values equal torch's to rounding (a few ulp), except where torch's own formula cancels in value:
GELU at z < -6 (1 + erf(z / sqrt 2) -> 0; here z erfc(-z / sqrt 2) / 2, its true value) and the
tanh-approximate GELU at large negative z.

Routed: ``torch.sigmoid`` / ``torch.special.expit`` / ``Tensor.sigmoid`` / ``F.sigmoid`` /
``nn.Sigmoid``, ``torch.tanh`` / ``Tensor.tanh`` / ``F.tanh`` / ``nn.Tanh``, ``F.silu``,
``F.logsigmoid``, ``F.softplus`` (beta, threshold kept), ``F.mish``, ``F.gelu`` (exact and
``approximate="tanh"``), and the in-place forms (``sigmoid_``, ``tanh_``, ``inplace=True``: computed
out of place, then copied in). Real floating-point tensors only; anything else goes to torch
unchanged. Not reached: activations inside fused kernels (``nn.LSTM`` / ``nn.GRU`` gates,
``scaled_dot_product_attention``), which torch differentiates with its own formulas.

``guards.ad_guards`` enters this mode around every pass of fastgeom's engines (dense, streamed,
linearized, randomized) and the curvature and path routes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_A = math.sqrt(2.0 / math.pi)
_GELU_B = 0.044715


def _neg_abs(z: torch.Tensor) -> torch.Tensor:
    """-|z| with derivative -sign(z), and -1 at z = 0 (abs's derivative is 0 there)."""
    return torch.where(z >= 0, -z, z)


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    """1 / (1 + t) (z >= 0) or t / (1 + t) (z < 0), t = exp(-|z|) in (0, 1]: every derivative in relative precision."""
    t = torch.exp(_neg_abs(z))
    r = torch.reciprocal(1.0 + t)
    return torch.where(z >= 0, r, t * r)


def tanh(z: torch.Tensor) -> torch.Tensor:
    """sign(z) (1 - t) / (1 + t), t = exp(-2|z|), for |z| >= 1/2; torch.tanh below (no cancellation there)."""
    t = torch.exp(2.0 * _neg_abs(z))
    big = (1.0 - t) / (1.0 + t)
    return torch.where(z.abs() < 0.5, torch.tanh(z), torch.where(z >= 0, big, -big))


def _softplus1(w: torch.Tensor) -> torch.Tensor:
    """log(1 + e^w) = max(w, 0) + log1p(exp(-|w|)) (no overflow, stable derivatives)."""
    return torch.where(w >= 0, w, torch.zeros_like(w)) + torch.log1p(torch.exp(_neg_abs(w)))


def softplus(z: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """torch's softplus: log(1 + e^(beta z)) / beta, and z itself where beta z > threshold."""
    w = z * beta if beta != 1 else z
    sp = _softplus1(w)
    if beta != 1:
        sp = sp / beta
    return torch.where(w > threshold, z, sp)


def silu(z: torch.Tensor) -> torch.Tensor:
    return z * sigmoid(z)


def logsigmoid(z: torch.Tensor) -> torch.Tensor:
    """log s(z) = min(z, 0) - log1p(exp(-|z|))."""
    return torch.where(z < 0, z, torch.zeros_like(z)) - torch.log1p(torch.exp(_neg_abs(z)))


def mish(z: torch.Tensor) -> torch.Tensor:
    """z tanh(softplus(z)) (torch's mish has no softplus threshold)."""
    return z * tanh(_softplus1(z))


def gelu(z: torch.Tensor) -> torch.Tensor:
    """z Phi(z), Phi(z) = erfc(-z / sqrt 2) / 2 (no 1 + erf)."""
    return z * (0.5 * torch.erfc(-z * _INV_SQRT_2))


def gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    """0.5 z (1 + tanh u) = z s(2u), u = sqrt(2 / pi) (z + 0.044715 z^3)."""
    return z * sigmoid((2.0 * _GELU_A) * (z + _GELU_B * z * z * z))


# ---------------------------------------------------------------- first derivatives, as stable plain ops
def _t_r(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) = (exp(-|z|), 1 / (1 + t)): s(z) = r, s(-z) = t r for z >= 0 (swapped for z < 0)."""
    t = torch.exp(_neg_abs(z))
    return t, torch.reciprocal(1.0 + t)


def dsigmoid(z: torch.Tensor) -> torch.Tensor:
    """s'(z) = t / (1 + t)^2, t = exp(-|z|)."""
    t, r = _t_r(z)
    return t * r * r


def dtanh(z: torch.Tensor) -> torch.Tensor:
    """tanh'(z) = sech^2 z = 4 t / (1 + t)^2, t = exp(-2|z|)."""
    t = torch.exp(2.0 * _neg_abs(z))
    r = torch.reciprocal(1.0 + t)
    return 4.0 * t * r * r


def _dsilu(z: torch.Tensor) -> torch.Tensor:
    """silu'(z) = s(z) (1 + z s(-z))."""
    t, r = _t_r(z)
    pos = z >= 0
    sp, sm = torch.where(pos, r, t * r), torch.where(pos, t * r, r)
    return sp * (1.0 + z * sm)


def _dmish(z: torch.Tensor) -> torch.Tensor:
    """mish'(z) = tanh(sp) + z s(z) sech^2(sp), sp = softplus(z) >= 0."""
    sp = _softplus1(z)
    return tanh(sp) + z * sigmoid(z) * dtanh(sp)


def _dgelu(z: torch.Tensor) -> torch.Tensor:
    """gelu'(z) = Phi(z) + z phi(z)."""
    return 0.5 * torch.erfc(-z * _INV_SQRT_2) + z * (_INV_SQRT_2PI * torch.exp(-0.5 * z * z))


def _dgelu_tanh(z: torch.Tensor) -> torch.Tensor:
    """d/dz z s(2u) = s(2u) + z (2u)' s'(2u)."""
    u2 = (2.0 * _GELU_A) * (z + _GELU_B * z * z * z)
    return sigmoid(u2) + z * ((2.0 * _GELU_A) * (1.0 + (3.0 * _GELU_B) * z * z)) * dsigmoid(u2)


def _dsoftplus(z: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    w = z * beta if beta != 1 else z
    return torch.where(w > threshold, torch.ones_like(z), sigmoid(w))


# name -> (value: torch's kernel or the stable form, derivative, stable composition for nested differentiation)
_ACTS = {
    "sigmoid": (torch.sigmoid, dsigmoid, sigmoid),
    "tanh": (torch.tanh, dtanh, tanh),
    "silu": (F.silu, _dsilu, silu),
    "logsigmoid": (F.logsigmoid, lambda z: sigmoid(-z), logsigmoid),
    "mish": (F.mish, _dmish, mish),
    "gelu": (gelu, _dgelu, gelu),
    "gelu_tanh": (gelu_tanh, _dgelu_tanh, gelu_tanh),
}


# Always the plain-op composition, at first order too: GELU's (z erfc(-z / sqrt 2) / 2, 4 ops) costs
# less than an autograd.Function call under torch.func transforms (about 0.7 ms each, pytree-bound:
# 2x the per-call time of a width-8 ResNet-18 at one point), and its autograd formula is stable.
_COMPOSED = frozenset({"gelu"})


class _Act(torch.autograd.Function):
    """One routed activation at first order: the value of ``_ACTS[name][0]`` (softplus: with beta,
    threshold), backward g * d(z) and jvp t * d(z) with d the stable derivative in plain ops (so double
    backward, through these ops, is stable too). Saves z only, like torch's own formulas save one tensor."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, name, beta, threshold):
        if name == "softplus":
            return F.softplus(z, beta, threshold)
        return _ACTS[name][0](z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, ctx.name, ctx.beta, ctx.threshold = inputs
        ctx.save_for_backward(z)
        ctx.save_for_forward(z)

    @staticmethod
    def _deriv(ctx, z):
        if ctx.name == "softplus":
            return _dsoftplus(z, ctx.beta, ctx.threshold)
        return _ACTS[ctx.name][1](z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * _Act._deriv(ctx, z), None, None, None

    @staticmethod
    def jvp(ctx, t, *_):
        (z,) = ctx.saved_tensors
        return t * _Act._deriv(ctx, z)


_DIFF_LEVELS = None


def _nested() -> bool:
    """Whether two or more torch.func differentiation transforms (jvp, vjp, grad, jacrev, jacfwd) are active:
    then the routed functions are the plain-op compositions, because torch's forward mode over an
    autograd.Function's jvp rule silently gives zero higher derivatives (pytorch/pytorch#197867)."""
    global _DIFF_LEVELS
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    if _DIFF_LEVELS is None:
        from torch._C._functorch import TransformType

        _DIFF_LEVELS = (TransformType.Jvp, TransformType.Grad)
    return sum(i.key() in _DIFF_LEVELS for i in retrieve_all_functorch_interpreters()) >= 2


def apply(name: str, z: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """The routed activation ``name`` at z: the cheap first-order Function, or the plain-op composition
    under nested differentiation."""
    if name in _COMPOSED or _nested():
        return softplus(z, beta, threshold) if name == "softplus" else _ACTS[name][2](z)
    # the Function saves its input (torch's sigmoid/tanh save their output): a private copy, so that a model
    # that later writes z in place (b.tanh() then b.sigmoid_()) does not invalidate what backward needs
    return _Act.apply(z.clone(), name, beta, threshold)


def _real_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _inplace(x: torch.Tensor, name: str) -> torch.Tensor:
    """x.copy_(act(x)), act applied to a copy so that its autograd graph does not save the x being overwritten."""
    return x.copy_(apply(name, x.clone()))


def _call(func, args, kwargs):
    """The stable version of func(*args, **kwargs), or None where func is not routed for these arguments."""
    if not args or not _real_float(args[0]):
        return None
    x, rest, kw = args[0], args[1:], dict(kwargs)
    if func in _PLAIN:
        if rest or kw:
            return None
        name = _PLAIN[func]
        return _inplace(x, name) if func in _INPLACE else apply(name, x)
    if func is F.silu or func is F.mish:
        inplace = kw.pop("inplace", rest[0] if rest else False)
        if len(rest) > 1 or kw:
            return None
        name = "silu" if func is F.silu else "mish"
        return _inplace(x, name) if inplace else apply(name, x)
    if func is F.softplus:
        beta = kw.pop("beta", rest[0] if len(rest) > 0 else 1.0)
        threshold = kw.pop("threshold", rest[1] if len(rest) > 1 else 20.0)
        if len(rest) > 2 or kw or not isinstance(beta, (int, float)) or not isinstance(threshold, (int, float)):
            return None
        return apply("softplus", x, float(beta), float(threshold))
    if func is F.gelu:
        approx = kw.pop("approximate", rest[0] if rest else "none")
        if len(rest) > 1 or kw or approx not in ("none", "tanh"):
            return None
        return apply("gelu" if approx == "none" else "gelu_tanh", x)
    return None


_PLAIN = {
    torch.sigmoid: "sigmoid",
    torch.special.expit: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.sigmoid_: "sigmoid",
    torch.Tensor.sigmoid_: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
    F.tanh: "tanh",
    torch.tanh_: "tanh",
    torch.Tensor.tanh_: "tanh",
    F.logsigmoid: "logsigmoid",
}
_INPLACE = {torch.sigmoid_, torch.Tensor.sigmoid_, torch.tanh_, torch.Tensor.tanh_}
ROUTED = frozenset(_PLAIN) | {F.silu, F.mish, F.softplus, F.gelu}


# Normalisations whose nested forward mode torch 2.14 gets wrong (an O(1) error in the second derivative
# under jvp-of-jvp / jacfwd-of-jacfwd; reverse-over-reverse and first order are right): layer_norm,
# instance_norm and batch_norm with batch statistics. group_norm and rms_norm are right. Under nested
# differentiation they are routed to these compositions of plain ops (same values up to rounding).


def _normalize(x: torch.Tensor, dims: tuple, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over dims (biased variance, as torch's normalisations)."""
    c = x - x.mean(dims, keepdim=True)
    return c * torch.rsqrt((c * c).mean(dims, keepdim=True) + eps)


def _affine(y: torch.Tensor, weight, bias, shape) -> torch.Tensor:
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _channel_shape(x: torch.Tensor) -> tuple:
    return (1, -1) + (1,) * (x.dim() - 2)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    k = len(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) else 1
    return _affine(_normalize(x, tuple(range(-k, 0)), eps), weight, bias, tuple(x.shape[-k:]))


def _norm_call(func, args, kwargs):
    """The plain-op normalisation for func(*args, **kwargs) under nested differentiation, or None."""
    names = {
        F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
        F.instance_norm: (
            "input",
            "running_mean",
            "running_var",
            "weight",
            "bias",
            "use_input_stats",
            "momentum",
            "eps",
        ),
        F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    }[func]
    if len(args) > len(names) or not _nested():
        return None
    a = dict(zip(names, args))
    a.update(kwargs)
    x = a["input"]
    if not _real_float(x):
        return None
    if func is F.layer_norm:
        return layer_norm(x, a["normalized_shape"], a.get("weight"), a.get("bias"), a.get("eps", 1e-5))
    if x.dim() < 2:
        return None
    batch_stats = a.get("use_input_stats", True) if func is F.instance_norm else a.get("training", False)
    if not batch_stats or a.get("running_mean") is not None or a.get("running_var") is not None:
        return None  # running statistics: an affine map of x (torch is right), or a stats update (leave to torch)
    dims = tuple(range(2, x.dim())) if func is F.instance_norm else (0,) + tuple(range(2, x.dim()))
    return _affine(_normalize(x, dims, a.get("eps", 1e-5)), a.get("weight"), a.get("bias"), _channel_shape(x))


NORMS = frozenset({F.layer_norm, F.instance_norm, F.batch_norm})


def stable_active() -> bool:
    """Whether a ``stable_activations`` mode is on this thread's torch-function mode stack (and not
    suspended, as it is inside its own handler)."""
    return any(isinstance(m, stable_activations) for m in _mode_stack())


def _mode_stack() -> list:
    from torch.overrides import _get_current_function_mode_stack

    return list(_get_current_function_mode_stack())


class stable_activations(TorchFunctionMode):
    """Inside the block, the activations listed in the module docstring have saturation-stable derivatives
    (values equal to torch's up to rounding)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ROUTED or func in NORMS:
            out = _call(func, args, kwargs) if func in ROUTED else _norm_call(func, args, kwargs)
            if out is not None and _real_float(out):
                return out
        return func(*args, **kwargs)
