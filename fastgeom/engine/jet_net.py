"""Second-order forward mode (Taylor jets) through the traced feature map: phi, J and chosen second derivatives.

``JetGraph(fmap)`` reuses the linearised engine's trace (``linear_net.LinearGraph``: torch.fx, in-place ops
rewritten, eval-mode BatchNorm folded, a private copy in the compute dtype) and walks it once per point
batch with a jet at every node: for directions E (k, P, *in) and index pairs (ia, ib) (m,) into them,

    Z = [d_{e_a} h for a < k ; d_{e_ia} d_{e_ib} h for the m pairs]    (k + m, P, *shape of h)

beside the primal value h. The second-order rows start at zero (the input is affine in the directions)
and are not stored until the first non-linear node makes them non-zero. Rules (no rule ever treats a
node that depends on x as a constant):

- convolution / linear / unfolded BatchNorm scale / average pooling / reshapes / permutations / identity,
  residual add and sub (broadcasting): linear, applied to all k + m rows at once (no bias);
- elementwise activations (the same set as the linearised engine): Z_1 -> s'(h) Z_1 and
  Z_ab -> s'(h) Z_ab + s''(h) Z_a Z_b, with s', s'' in closed form for tanh / sigmoid (from the
  output), 0 for s'' of ReLU, else from autograd (a derivative of the derivative at h, elementwise);
- products a * b: the product rule (second order: a_ab b + a b_ab + a_a b_b + a_b b_a);
- every other node that depends on x (LayerNorm, attention, concatenation, max-pool, the feature map's
  pool and ``target="sphere"`` normalisation, unknown functions, tuple-valued nodes composed into their
  consumers): ``torch.func`` at that node, J_f t for the first-order rows and
  d_ib(J_f t_ia) + J_f t_ab (a JVP of a JVP plus a JVP) for the second-order ones, vmapped over rows.

``validated_jet(fmap, x, d_out)`` (what ``fastgeom.surfaces`` calls) checks the traced pass at the first point
before any work is done with it, against reverse-over-reverse autograd on the model itself (an
independent mode of differentiation, 8x cheaper there than a nested JVP on small nets): phi, and for two
random cotangents c the contractions c . J t and c . H(t, s) of two random directions (all three pairs),
to 1e-9 relative in float64 (1e-4 in float32, 1e-2 in half precision); below float64 a float64 copy
of the graph is also checked against the float64 feature map to 1e-9. Failing models raise
``LinearizeError`` (as untraceable ones do); the caller then uses the nested-JVP route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import jvp as _jvp

from .batching import vmap
from .guards import ad_guards
from .linear_net import (
    _CONV_FWD,
    LinearGraph,
    LinearizeError,
    _describe,
    _is_float_tensor,
    _is_relu,
    _run,
    feature_node,
)
from .planner import is_oom

__all__ = ["JetGraph", "validated_jet"]

# the linearised engine's rules that have a jet rule here (its "layernorm" goes through torch.func)
_RULES = {
    "act",
    "mul",
    "layernorm",
    "add",
    "sub",
    "conv",
    "linear",
    "scale",
    "identity",
    "reshape",
    "permute",
    "batchlinear",
}


class _Jet:
    """Rows Z (k + m, P, *shape) of a node's jet, or (k, P, *shape) while its second-order rows are zero."""

    __slots__ = ("Z", "full")

    def __init__(self, Z: torch.Tensor, full: bool):
        self.Z, self.full = Z, full


def _with_second(Z: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """Z (k, ...) padded with m zero second-order rows."""
    return torch.cat([Z, Z.new_zeros((m, *Z.shape[1:]))])


def _act_derivatives(node: fx.Node, fn, act: Callable, h: torch.Tensor, y: torch.Tensor):
    """(s'(h), s''(h) or None when it is zero) of an elementwise activation with output y = act(h)."""
    target = type(fn) if node.op == "call_module" else node.target
    if target in (nn.Tanh, torch.tanh, F.tanh, "tanh"):
        s1 = 1 - y * y
        return s1, -2 * y * s1
    if target in (nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid"):
        s1 = y * (1 - y)
        return s1, s1 * (1 - 2 * y)
    with torch.enable_grad():
        hh = h.detach().requires_grad_(True)
        out = act(hh)
        (s1,) = torch.autograd.grad(out, hh, torch.ones_like(out), create_graph=True)
        s2 = None
        if s1.requires_grad:
            (s2,) = torch.autograd.grad(s1, hh, torch.ones_like(s1), allow_unused=True)
    return s1.detach(), (None if s2 is None else s2.detach())


def _elementwise(z: _Jet, s1: torch.Tensor, s2: torch.Tensor | None, k, ia, ib) -> _Jet:
    """The jet of s(h) from h's: Z_a -> s'(h) Z_a, Z_ab -> s'(h) Z_ab + s''(h) Z_a Z_b."""
    out = z.Z * s1
    if s2 is None:
        return _Jet(out, z.full)
    Z1 = z.Z[:k]
    curv = s2 * Z1[ia] * Z1[ib]
    if z.full:
        out[k:] += curv
        return _Jet(out, True)
    return _Jet(torch.cat([out, curv]), True)


def _product(za: _Jet, a: torch.Tensor, zb: _Jet, b: torch.Tensor, k, ia, ib) -> _Jet:
    """The jet of a * b (broadcasting): (ab)_a = a_a b + a b_a, (ab)_ab = a_ab b + a b_ab + a_a b_b + a_b b_a."""
    A, B = za.Z, zb.Z
    A1, B1 = A[:k], B[:k]
    first = A1 * b + a * B1
    second = A1[ia] * B1[ib] + A1[ib] * B1[ia]
    if za.full:
        second = second + A[k:] * b
    if zb.full:
        second = second + a * B[k:]
    return _Jet(torch.cat([first, second]), True)


def _layer_norm_jet(x: torch.Tensor, data, z: _Jet, k, ia, ib) -> _Jet:
    """The jet of LayerNorm w * (x - mean) * rsqrt(var + eps) (+ bias) over ``dims``, composed from the rules
    above: centring (linear), var = mean(c * c) (product), rsqrt (elementwise: -r^3 / 2, 3 r^5 / 4), c * r.

    An explicit rule: torch's forward-mode formula for layer_norm is not correct under a second
    forward-mode derivative (torch 2.14: nested JVPs of F.layer_norm differ from reverse-over-reverse by
    O(1)), so torch.func at this node would be wrong (and the first-point check would refuse the trace)."""
    _, r, w, dims = data
    c = x - x.mean(dims, keepdim=True)
    zc = _Jet(z.Z - z.Z.mean(dims, keepdim=True), z.full)  # dims are negative: the same for the rows
    sq = _product(zc, c, zc, c, k, ia, ib)
    zv = _Jet(sq.Z.mean(dims, keepdim=True), True)
    zr = _elementwise(zv, -0.5 * r**3, 0.75 * r**5, k, ia, ib)
    out = _product(zc, c, zr, r, k, ia, ib)
    return out if w is None else _Jet(out.Z * w, out.full)


class JetGraph:
    """The traced feature map (``LinearGraph``) with a second-order forward pass (see module docstring)."""

    def __init__(self, fmap):
        self.fmap = fmap
        # NCHW: the jet runs forward convolutions only (channels-last helps the transposed ones)
        self.graph = LinearGraph(fmap, channels_last=False)
        self.post_is_reshape = fmap.pool is None and fmap.target == "euclidean"
        self.saved: dict[tuple, tuple[int, int]] = {}  # the curvature planner's saved bytes per input key

    def jet(
        self, x: torch.Tensor, E: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi (P, n), J (k, P, n) with J[a] = d_{E[a]} phi, and H (m, P, n) with H[p] = d_{E[ia[p]]} d_{E[ib[p]]} phi,
        at x (P, *in) along directions E (k, P, *in), in the compute dtype."""
        x = self.fmap.own_input(x)
        with ad_guards(), torch.no_grad():
            return self._walk(x, E.to(x.dtype), ia.to(x.device), ib.to(x.device))

    # ------------------------------------------------------------------------------------------
    def _walk(self, x, E, ia, ib):
        g = self.graph
        k, m = E.shape[0], ia.numel()
        env: dict[str, Any] = {}
        jets: dict[str, _Jet] = {}
        carries: set[str] = set()
        composites: dict[str, tuple] = {}
        keep: set[str] = set()  # leaves of composites: their jets outlive their direct users
        users = {n.name: len(n.users) for n in g.nodes}
        out_node = None
        jets[g.input] = _Jet(E, False)  # the input's jet: the directions
        for node, fn, args, kwargs, carried, rule, data in g.walk(
            x, env, carries, composites, "the jet pass can differentiate"
        ):
            if node.op == "output":
                out_node = node
                break
            if rule not in _RULES:  # pragma: no cover - a first-order rule without a jet rule: torch.func
                rule, data = "func", None
            if rule == "func":
                f, names, primals = g.leaf_function(node, fn, carries, composites, env)
                val = _run(node, f, primals, {})
                if not isinstance(val, torch.Tensor) or not val.is_floating_point():
                    if any(_is_float_tensor(t) for t in torch.utils._pytree.tree_flatten(val)[0]):
                        composites[node.name] = (f, names, primals)
                        carries.add(node.name)
                        keep.update(names)
                    env[node.name] = val
                    self._free(node, users, env, jets, keep)
                    continue
                jet = self._generic(node, f, primals, [jets[n] for n in names], k, ia, ib)
            else:
                val = _run(node, fn, args, kwargs)
                zs = [jets[node.args[i].name] for i in carried]
                jet = self._rule(node, rule, data, fn, args, kwargs, val, zs, k, m, ia, ib)
            env[node.name] = val
            if _is_float_tensor(val):
                carries.add(node.name)
                jets[node.name] = jet
            self._free(node, users, env, jets, keep)
        res = feature_node(out_node, lambda n: n in jets)
        y, jet = env[res.name], jets[res.name]
        P = y.shape[0]
        if self.post_is_reshape:
            phi, Z = y.reshape(P, -1), jet.Z.reshape(jet.Z.shape[0], P, -1)
        else:
            phi = self.fmap.post(y)
            Z = self._generic(out_node, self.fmap.post, (y,), [jet], k, ia, ib).Z
        if Z.shape[0] == k:  # a map affine in x: no second derivatives
            Z = _with_second(Z, k, m)
        return phi, Z[:k], Z[k:]

    @staticmethod
    def _free(node, users, env, jets, keep):
        for a in node.all_input_nodes:  # primal values and jets no later node needs
            users[a.name] -= 1
            if users[a.name] == 0 and a.name not in keep:
                env.pop(a.name, None)
                jets.pop(a.name, None)

    # ------------------------------------------------------------------------------------------
    def _rule(self, node, rule, data, fn, args, kwargs, val, zs: list[_Jet], k, m, ia, ib) -> _Jet:
        if rule == "act":
            act = lambda t, _f=fn, _a=args, _k=kwargs: _f(t, *_a[1:], **_k)  # noqa: E731
            if _is_relu(node, fn, args, kwargs):
                s1, s2 = (args[0] > 0).to(val.dtype), None
            else:
                s1, s2 = _act_derivatives(node, fn, act, args[0], val)
            return _elementwise(zs[0], s1, s2, k, ia, ib)
        if rule == "mul":
            factors, carried, _ = data
            if len(carried) == 1:
                return _Jet(zs[0].Z * factors[1 - carried[0]], zs[0].full)
            return _product(zs[0], factors[0], zs[1], factors[1], k, ia, ib)
        if rule == "layernorm":
            return _layer_norm_jet(args[0], data, zs[0], k, ia, ib)
        if rule in ("add", "sub"):
            (A, fa), (B, fb) = (zs[0].Z, zs[0].full), (zs[1].Z, zs[1].full)
            if fa != fb:
                A, B = (A, _with_second(B, k, m)) if fa else (_with_second(A, k, m), B)
            return _Jet(A + B if rule == "add" else A - B, fa or fb)
        Z, full = zs[0].Z, zs[0].full
        R, P = Z.shape[:2]
        if rule == "conv":
            y = _CONV_FWD[type(data)](
                Z.reshape(R * P, *Z.shape[2:]), data.weight, None, data.stride, data.padding, data.dilation, data.groups
            )
            return _Jet(y.reshape(R, P, *y.shape[1:]), full)
        if rule == "linear":
            return _Jet(Z @ data.weight.mT, full)
        if rule == "scale":
            return _Jet(Z * data.reshape(-1, *([1] * (val.dim() - 2))), full)
        if rule == "identity":
            return _Jet(Z if data is None else Z.expand((R,) + data[1]), full)
        if rule == "reshape":
            return _Jet(Z.reshape((R,) + tuple(val.shape)), full)
        if rule == "permute":
            return _Jet(Z.permute(0, *[d + 1 for d in data]), full)
        if rule == "batchlinear":
            y = data(Z.reshape(R * P, *Z.shape[2:]))
            return _Jet(y.reshape(R, P, *y.shape[1:]), full)
        raise LinearizeError(f"no jet rule {rule!r} at {_describe(node)}")  # pragma: no cover - every rule is above

    def _generic(self, node, f: Callable, primals: tuple, zs: list[_Jet], k, ia, ib) -> _Jet:
        """torch.func at one node: first-order rows J_f t_a, second-order rows d_ib (J_f t_ia) + J_f t_ab."""
        n = len(primals)
        T1 = [z.Z[:k] for z in zs]
        key = f"jet at {node.name}"

        def d1(*ts):
            return _jvp(f, primals, ts)[1]

        def d2(*ts):
            ta, tb = ts[:n], ts[n:]
            return _jvp(lambda *ys: _jvp(f, ys, ta)[1], primals, tb)[1]

        try:
            with torch.enable_grad():
                first = vmap(d1, key=key)(*T1)
                second = vmap(d2, key=key)(*[t[ia] for t in T1], *[t[ib] for t in T1])
                if any(z.full for z in zs):
                    T2 = [
                        z.Z[k:] if z.full else torch.zeros_like(z.Z[:1]).expand(ia.numel(), *z.Z.shape[1:]) for z in zs
                    ]
                    second = second + vmap(d1, key=key)(*T2)
        except NotImplementedError as e:  # no forward-mode formula: the nested-JVP route would fail alike
            raise LinearizeError(f"torch.func.jvp failed at {_describe(node)}: {type(e).__name__}: {e}") from e
        return _Jet(torch.cat([first, second]).detach(), True)


# ---------------------------------------------------------------------------------------------- validation
def _reference(fmap, x1: torch.Tensor, E: torch.Tensor, C: torch.Tensor):
    """phi (1, n), c . J e (c, k) and c . H(e_a, e_b) (c, k, k) of the model at x1 by reverse-over-reverse autograd."""
    k = E.shape[0]
    with torch.enable_grad(), ad_guards():
        xx = x1.detach().clone().requires_grad_(True)
        phi = fmap(xx)
        first, second = [], []
        for c in C:
            (g,) = torch.autograd.grad(phi, xx, c, create_graph=True, retain_graph=True)
            first.append(torch.stack([(g * e).sum() for e in E]).detach())
            rows = []
            for a in range(k):
                (h,) = torch.autograd.grad((g * E[a]).sum(), xx, retain_graph=True, allow_unused=True)
                rows.append(
                    torch.zeros(k, dtype=xx.dtype, device=xx.device) if h is None else (h * E).flatten(1).sum(1)
                )
            second.append(torch.stack(rows))
    return phi.detach(), torch.stack(first), torch.stack(second)


def _check_first_point(jg: JetGraph, fmap, x1: torch.Tensor, d_out: int, tol: float) -> None:
    """LinearizeError unless the jet at x1 (1, *in) along two random directions matches autograd on fmap."""
    dt = x1.dtype
    gen = torch.Generator(device="cpu").manual_seed(0)
    E = torch.randn(2, *x1.shape, generator=gen, dtype=torch.float64).to(device=x1.device, dtype=dt)
    C = torch.randn(2, 1, d_out, generator=gen, dtype=torch.float64).to(device=x1.device, dtype=dt)
    ia, ib = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1])
    phi, J, H = jg.jet(x1, E, ia, ib)
    try:
        want_phi, want_J, want_H = (t.double() for t in _reference(fmap, x1, E, C))
    except (RuntimeError, NotImplementedError) as e:  # e.g. an op without a double backward
        if is_oom(e):
            raise
        raise LinearizeError(
            f"the jet pass could not be checked: autograd twice through the model failed ({type(e).__name__}: {e})"
        ) from e
    C2 = C.reshape(2, -1).double()
    got_J = C2 @ J.reshape(2, -1).double().T  # (c, k)
    got_H = C2 @ H.reshape(3, -1).double().T  # (c, pairs)
    want_Hp = want_H[:, ia, ib]
    cn = C2.norm(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float64).tiny

    def err(got, want, norms):
        scale = torch.maximum(cn * norms.double()[None], want.abs()).clamp_min(tiny)
        return float(((got - want).abs() / scale).max())

    errs = {
        "feature": float((phi.double() - want_phi).abs().max() / want_phi.abs().max().clamp_min(tiny)),
        "J": err(got_J, want_J, J.reshape(2, -1).norm(dim=1)),
        "H": err(got_H, want_Hp, H.reshape(3, -1).norm(dim=1).max().expand(3)),
    }
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        what = ", ".join(f"{k} {v:.1e}" for k, v in bad.items())
        raise LinearizeError(
            f"the traced second-order (jet) pass differs from the model at the first point in {dt} "
            f"(relative error {what} > {tol:g}): torch.fx did not capture what the model computes"
        )


def validated_jet(fmap, x: torch.Tensor, d_out: int) -> JetGraph:
    """A ``JetGraph`` of fmap checked at x's first point (see module docstring), else ``LinearizeError``."""
    jg = JetGraph(fmap)
    x1 = x[:1].detach()
    dt = fmap.dtype or x.dtype
    tol = {torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 1e-2}.get(dt, 1e-4)
    _check_first_point(jg, fmap, x1.to(dt), d_out, tol)
    if dt != torch.float64 and x.device.type != "mps":
        from ..features import FeatureMap

        fmap64 = FeatureMap(fmap.model, fmap.layer, fmap.pool, torch.float64, fmap.target)
        try:
            _check_first_point(JetGraph(fmap64), fmap64, x1.to(torch.float64), d_out, 1e-9)
        except (RuntimeError, NotImplementedError) as e:
            if isinstance(e, LinearizeError) or is_oom(e):
                raise
            raise LinearizeError(f"the float64 check of the jet pass could not run ({type(e).__name__}: {e})") from e
    return jg
