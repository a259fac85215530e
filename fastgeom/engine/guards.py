"""Settings under which fastgeom's own differentiation passes run (forward AD included).

``ad_guards()`` turns off ``nn.MultiheadAttention``'s inference fast path
(``aten::_native_multi_head_attention``, which has no forward-mode derivative) and restricts scaled
dot-product attention to the math kernel (the flash / memory-efficient CPU and CUDA kernels have no
forward AD either), restoring both on exit. Values are unchanged up to rounding: the math kernel and
the unfused MHA compute the same function. Every exact engine (dense, streamed, linearized) enters it
around its passes, so ViT token layers work in forward mode (d_out > d_in).

It also enters ``stable.stable_activations()``: sigmoid, tanh, SiLU, logsigmoid, softplus, Mish and
GELU get derivatives that keep their relative accuracy where the unit saturates (torch's y (1 - y)
and 1 - y^2 cancel there), to every order, under every torch.func transform.
"""

from __future__ import annotations

import contextlib

import torch

from .stable import stable_activations, stable_active


@contextlib.contextmanager
def ad_guards():
    """MHA fast path off, the math SDPA kernel only and saturation-stable activation derivatives, inside the
    block; previous settings restored after."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = getattr(torch.backends, "mha", None)
    old = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), contextlib.nullcontext() if stable_active() else stable_activations():
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(old)
