"""Fused dact_add (d * (a + b), its own transpose): Triton (interpreter on CPU), compiled CUDA vs the reference."""

import pytest
import torch

from fastgeom._ext import ext
from fastgeom.ops import linearized as L
from fastgeom.ops.linearized import reference as ref

SHAPES = [((3,), (5, 3)), ((7, 5, 3), (2, 7, 5, 3)), ((13, 9), (3, 4, 13, 9)), ((1031,), (2, 1031))]
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-15, atol=1e-15)}


def _inputs(ds, as_, dtype, device="cpu", noncontig=False):
    d = torch.randn(ds, dtype=dtype, device=device)
    if noncontig:  # a transposed view with the right logical shape
        a = torch.randn(tuple(reversed(as_)), dtype=dtype, device=device).permute(*reversed(range(len(as_))))
        assert not a.is_contiguous() or a.dim() == 1
    else:
        a = torch.randn(as_, dtype=dtype, device=device)
    b = torch.randn(as_, dtype=dtype, device=device)
    return d, a, b


def _float64_spec(d, a, b):
    return d.double() * (a.double() + (b.double() if b is not None else 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ds,as_", SHAPES)
@pytest.mark.parametrize("with_b", [True, False])
def test_reference_matches_float64_spec(dtype, ds, as_, with_b):
    d, a, b = _inputs(ds, as_, dtype)
    b = b if with_b else None
    torch.testing.assert_close(ref.dact_add(d, a, b).double(), _float64_spec(d, a, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ds,as_", SHAPES)
@pytest.mark.parametrize("noncontig", [False, True])
def test_triton_interpreter_vs_reference(dtype, ds, as_, noncontig):
    pytest.importorskip("triton")
    from fastgeom.ops.linearized import triton as T

    d, a, b = _inputs(ds, as_, dtype, noncontig=noncontig)
    for bb in (b, None):
        torch.testing.assert_close(T.dact_add(d, a, bb, block=256), ref.dact_add(d, a, bb), **TOL[dtype])
    torch.testing.assert_close(T.dact_add(d, a, None, block=128), ref.dact_add(d, a), **TOL[dtype])
    torch.testing.assert_close(L.dact_add(d, a, b, backend="triton"), ref.dact_add(d, a, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_arguments(dtype):
    """Huge, tiny and zero derivatives/tangents (saturated activations): exact products, no overflow in a + b."""
    big = torch.finfo(dtype).max / 4
    d = torch.tensor([0.0, 1e-30, 1.0, 2.0], dtype=dtype)
    a = torch.tensor([[big, big, -big, 1e-30], [1.0, -1.0, big, 0.0]], dtype=dtype)
    b = torch.tensor([[big, -big, 0.0, 1e-30], [-1.0, 1.0, -big, 0.0]], dtype=dtype)
    want = ref.dact_add(d, a, b)
    assert torch.isfinite(want).all() and want[1].eq(0).all()
    pytest.importorskip("triton")
    from fastgeom.ops.linearized import triton as T

    torch.testing.assert_close(T.dact_add(d, a, b, block=4), want, rtol=0, atol=0)


def test_transpose_is_adjoint():
    """<dact_add(d, a, b), c> = <a, dact_add(d, c)> + <b, dact_add(d, c)> (float64): the op is its own transpose."""
    d, a, b = _inputs((6, 5), (3, 6, 5), torch.float64)
    c = torch.randn_like(a)
    lhs = (ref.dact_add(d, a, b) * c).sum()
    t = ref.dact_add(d, c)
    torch.testing.assert_close(lhs, (a * t).sum() + (b * t).sum(), rtol=1e-13, atol=1e-13)
    # and it is what autograd says
    a.requires_grad_(True)
    (ga,) = torch.autograd.grad((ref.dact_add(d, a, b) * c).sum(), a)
    torch.testing.assert_close(ga, t)


def test_bad_inputs_named():
    d = torch.randn(4, 5)
    with pytest.raises(ValueError, match="must end with the derivative's shape"):
        L.dact_add(d, torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="residual b"):
        L.dact_add(d, torch.randn(3, 4, 5), torch.randn(2, 4, 5))
    with pytest.raises(TypeError, match="share dtype"):
        L.dact_add(d, torch.randn(3, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown backend"):
        L.dact_add(d, torch.randn(3, 4, 5), backend="fast")
    assert L.DACT_ADD.pick("auto", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="backend 'cpp' is not usable here: op 'dact_add' has no 'cpp'"):
        L.dact_add(d, torch.randn(3, 4, 5), backend="cpp")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ds,as_", SHAPES + [((64, 32, 32), (33, 64, 32, 32))])
def test_cuda_and_triton_on_gpu(dtype, ds, as_):
    d, a, b = _inputs(ds, as_, dtype, device="cuda", noncontig=True)
    want = ref.dact_add(d, a, b)
    torch.testing.assert_close(L.dact_add(d, a, b, backend="triton"), want, **TOL[dtype])
    torch.testing.assert_close(L.dact_add(d, a, None, backend="triton"), ref.dact_add(d, a, None), **TOL[dtype])
    if ext.has_op("dact_add") and ext.with_cuda:
        torch.testing.assert_close(L.dact_add(d, a, b, backend="cuda"), want, **TOL[dtype])
        torch.testing.assert_close(L.dact_add(d, a, backend="cuda"), ref.dact_add(d, a), **TOL[dtype])
