"""The compiled extension fastgeom._C against its torch references (fastgeom/ops/logdet/reference.py),
and the fallback / explicit-backend behaviour when it is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom._ext import ext
from fastgeom.ops import logdet
from fastgeom.ops.logdet import reference

D = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Skip only when the extension was never built; a built extension that fails to load is a failure.
NOT_BUILT = ext.error is not None and (
    "No module named 'fastgeom._C'" in ext.error or "FASTGEOM_DISABLE_EXT" in ext.error
)
needs_ext = pytest.mark.skipif(NOT_BUILT, reason=f"fastgeom._C not built here ({ext.error}); `make ext` builds it")


def test_built_extension_loads():
    if NOT_BUILT:
        pytest.skip(f"fastgeom._C not built ({ext.error})")
    assert ext.ok, f"fastgeom._C is present but failed to load: {ext.error}"
    assert ext.has_op("qrcp") and ext.has_op("logdiag_sum")
    bi = ext.build_info()
    assert bi["torch"] == torch.__version__ and "with_cuda" in bi


SHAPES = [(3, 7, 5), (2, 5, 7), (1, 1, 1), (2, 1, 4), (2, 4, 1), (0, 3, 3), (4, 9, 9), (1, 33, 17)]


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
def test_qrcp_matches_reference(shape):
    g = torch.Generator().manual_seed(sum(shape))
    A = torch.randn(*shape, generator=g, dtype=D)
    R1, p1 = torch.ops.fastgeom.qrcp(A)
    R2, p2 = reference.qrcp(A)
    assert R1.shape == R2.shape == (shape[0], min(shape[1:]), shape[2])
    assert torch.equal(p1, p2)
    assert torch.allclose(R1, R2, rtol=1e-12, atol=1e-13)
    # A[:, :, perm] = Q R: same Gram matrix, R upper trapezoidal, |R_ii| non-increasing
    Ap = torch.gather(A, 2, p1[:, None, :].expand(-1, shape[1], -1))
    if shape[1] >= shape[2]:
        assert torch.allclose(R1.mT @ R1, Ap.mT @ Ap, rtol=1e-12, atol=1e-12)
    assert torch.equal(R1, torch.triu(R1))
    d = torch.diagonal(R1, dim1=-2, dim2=-1).abs()
    assert torch.all(d[:, :-1] >= d[:, 1:] * (1 - 1e-12))


@needs_ext
@pytest.mark.parametrize("shape", [(2, 1, 4), (2, 4, 1), (3, 5, 4)])
@pytest.mark.parametrize("transposed", [False, True])
def test_qrcp_does_not_modify_its_input(shape, transposed):
    """The op works in place on a column-major copy; it must be a copy even when A^T is contiguous."""
    A = torch.randn(*shape, dtype=D)
    if transposed:
        A = A.mT.contiguous().mT  # a (B, m, n) view whose transpose is contiguous
    A0 = A.clone()
    torch.ops.fastgeom.qrcp(A)
    assert torch.equal(A, A0)
    reference.qrcp(A)
    assert torch.equal(A, A0)


@needs_ext
def test_qrcp_graded_zero_columns_noncontiguous_float32():
    A = torch.randn(2, 8, 5, dtype=D) * torch.logspace(0, -250, 5, dtype=D)  # entries down to 1e-250
    A[:, :, 2] = 0
    R1, p1 = torch.ops.fastgeom.qrcp(A)
    R2, p2 = reference.qrcp(A)
    assert torch.equal(p1, p2) and p1[0, -1] == 2  # the zero column is pivoted last
    d1, d2 = torch.diagonal(R1, dim1=-2, dim2=-1), torch.diagonal(R2, dim1=-2, dim2=-1)
    assert torch.all(d1[:, -1] == 0)
    assert torch.allclose(d1[:, :4] / d2[:, :4], torch.ones(2, 4, dtype=D), rtol=1e-13)  # relative, not absolute
    X = torch.randn(3, 10, 12, dtype=D)[:, ::2, 1::2]  # non-contiguous (3, 5, 6)
    assert torch.allclose(torch.ops.fastgeom.qrcp(X)[0], reference.qrcp(X)[0], rtol=1e-12, atol=1e-13)
    X32 = torch.randn(2, 6, 4)
    R32, _ = torch.ops.fastgeom.qrcp(X32)
    assert R32.dtype == D and torch.allclose(R32, reference.qrcp(X32)[0], rtol=1e-12, atol=1e-13)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logdiag_sum_matches_reference(dtype):
    R = torch.randn(5, 6, 5, dtype=dtype)
    k = torch.tensor([0, 3, 5, 9, -1])  # k beyond min(p, q) and negative are clipped
    out = torch.ops.fastgeom.logdiag_sum(R, k)
    assert out.dtype == D and out.shape == (5,)
    assert torch.allclose(out, reference.logdiag_sum(R, k), rtol=1e-14, atol=1e-14)
    assert out[0] == 0 and out[4] == 0
    Rt = torch.randn(4, 7, 3, dtype=D).mT  # non-contiguous
    k2 = torch.full((4,), 3)
    assert torch.allclose(torch.ops.fastgeom.logdiag_sum(Rt, k2), reference.logdiag_sum(Rt, k2), rtol=1e-14)
    assert torch.ops.fastgeom.logdiag_sum(torch.zeros(0, 2, 2, dtype=D), torch.zeros(0, dtype=torch.long)).shape == (0,)


@needs_ext
def test_logvol_cpp_backend_equals_torch_backend():
    m = nn.Sequential(nn.Linear(9, 13), nn.Tanh(), nn.Linear(13, 6)).to(D)
    x = torch.randn(4, 9, dtype=D)
    # rank_tol forces the dynamic-pivoting path (qrcp) for every point
    a = fg.logvol(m, x, backend="cpp", rank_tol=1e-14)
    b = fg.logvol(m, x, backend="torch", rank_tol=1e-14)
    assert torch.allclose(a, b, rtol=1e-13, atol=0)
    assert torch.allclose(fg.spectrum(m, x, backend="cpp"), fg.spectrum(m, x, backend="torch"), rtol=1e-13)


@pytest.mark.gpu
def test_logdiag_sum_cuda_matches_reference():
    if not ext.with_cuda:
        pytest.skip("fastgeom._C built without CUDA")
    R = torch.randn(7, 300, 290, dtype=D, device="cuda")
    k = torch.tensor([0, 1, 5, 255, 256, 290, 400], device="cuda")
    out = torch.ops.fastgeom.logdiag_sum(R, k)
    assert torch.allclose(out.cpu(), reference.logdiag_sum(R.cpu(), k.cpu()), rtol=1e-13, atol=1e-13)
    lv = fg.logvol(nn.Linear(5, 3).to(D).cuda(), torch.randn(4, 5, dtype=D, device="cuda"), backend="cuda")
    assert lv.device.type == "cuda"


_NO_EXT_SCRIPT = r"""
import json, torch
from torch import nn
import fastgeom as fg
from fastgeom.ops import logdet
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(6, 4), nn.Tanh()).double()
x = torch.randn(3, 6, dtype=torch.float64)
res = {"logvol": fg.logvol(m, x, rank_tol=1e-14).tolist(), "info": fg.info()}
for name, call in [("logvol_cpp", lambda: fg.logvol(m, x, backend="cpp")),
                   ("qrcp_cpp", lambda: logdet.qrcp(torch.randn(1, 3, 3, dtype=torch.float64), backend="cpp"))]:
    try:
        call()
        res[name] = None
    except RuntimeError as e:
        res[name] = str(e)
print("JSON" + json.dumps(res, default=str))
"""


def test_disabled_extension_falls_back_and_explicit_backend_raises():
    env = dict(os.environ, FASTGEOM_DISABLE_EXT="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _NO_EXT_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.split("JSON", 1)[1])
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 4), nn.Tanh()).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose(torch.tensor(res["logvol"], dtype=D), fg.logvol(m, x, rank_tol=1e-14), rtol=1e-13)
    info = res["info"]
    assert info["extension"]["loaded"] is False
    assert "FASTGEOM_DISABLE_EXT=1" in info["extension"]["error"]
    assert info["backends"]["cpp"]["usable"] is False and info["backends"]["torch"]["usable"] is True
    for key in ("logvol_cpp", "qrcp_cpp"):
        msg = res[key]
        assert msg is not None, f"{key}: explicitly asking for backend='cpp' without the extension must raise"
        assert "backend 'cpp' is not usable here" in msg and "pip install --no-build-isolation ." in msg


def test_explicit_cuda_backend_without_cuda_raises():
    if torch.cuda.is_available() and ext.with_cuda:
        pytest.skip("CUDA backend is usable here")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not usable here.*FASTGEOM_BUILD_CUDA=1"):
        logdet.logdiag_sum(torch.ones(1, 2, 2, dtype=D), torch.tensor([2]), backend="cuda")


_JVP_SCRIPT = r"""
import warnings
warnings.simplefilter("always")
import torch
import fastgeom
from torch.func import jvp
x = torch.randn(3, dtype=torch.float64)
jvp(torch.tanh, (x,), (x,))  # the first forward-mode call imports torch's jvp decompositions
print("OK")
"""


def test_no_torch_jit_script_deprecation_warning_from_forward_mode():
    """torch's decompositions_for_jvp runs torch.jit.script at import: fastgeom keeps that FutureWarning quiet."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _JVP_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert "jit.script" not in out.stderr, out.stderr
