"""Linearise once per point: fold eval-mode BatchNorm into convolutions, and trace the tangent map.

``fold_batchnorm(model)``: a copy of the model (module names kept, so ``layer=`` hooks still work)
in which every ``Conv{1,2,3}d`` immediately followed (in registration order, inside the same
parent) by a ``BatchNorm`` over its output channels is replaced by the fused convolution
(``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the BatchNorm by ``nn.Identity``. Registration
order is not always data-flow order, so the result is checked on a probe input (``check=``) and a
mismatch raises instead of returning a different function. Eval-mode only: a BatchNorm in training
mode normalises with batch statistics and is not a fixed affine map.

``linearized_jvp(fmap, x)``: ``torch.func.linearize`` traces the JVP of the feature map once per
point batch, keeping only the primal values the tangent pass needs (activation derivatives and the
like), so each later JVP is a pure linear network without the forward pass. The returned function
takes a batch of tangents (P, B, *input_shape) -> (P, B, d_out).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _fold_children(module: nn.Module) -> int:
    n = 0
    names = list(module._modules.keys())
    for i, name in enumerate(names):
        child = module._modules[name]
        if child is None:
            continue
        n += _fold_children(child)
        if i + 1 >= len(names):
            continue
        nxt = module._modules[names[i + 1]]
        for conv_t, bn_t in _PAIRS:
            if (type(child) is conv_t and type(nxt) is bn_t and nxt.num_features == child.out_channels
                    and nxt.track_running_stats and nxt.running_mean is not None):
                module._modules[name] = fuse_conv_bn_eval(child, nxt)
                module._modules[names[i + 1]] = nn.Identity()
                n += 1
                break
    return n


def fold_batchnorm(model: nn.Module, check: torch.Tensor | None = None, rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """(folded eval-mode copy of ``model``, number of conv+BN pairs folded).

    ``check``: a probe input batch; the folded model's output must match the original's to ``rtol``
    (relative to the output's max magnitude), otherwise ValueError (a BN that does not follow its
    conv in the data flow).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    n = _fold_children(folded)
    if check is not None and n:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                want, got = model(check), folded(check)
        finally:
            model.train(was)
        err = (want - got).abs().max() / want.abs().max().clamp_min(torch.finfo(want.dtype).tiny)
        if not bool(err <= rtol):
            raise ValueError(f"folding BatchNorm into the preceding convolutions changed the model's output "
                             f"(relative error {float(err):.2e} > {rtol}): some BatchNorm does not directly follow "
                             "its convolution in the data flow. Use the model unfolded.")
    return folded, n


def linearized_jvp(fmap, x: torch.Tensor):
    """(output (B, d_out), jvp_fn): jvp_fn(T (P, B, *input_shape)) -> (P, B, d_out), traced once at x."""
    out, fn = torch.func.linearize(fmap, x)

    def jvp_fn(tangents: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(fn)(tangents)

    return out, jvp_fn
