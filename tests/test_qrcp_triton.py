"""Triton qrcp (fastgeom/ops/logdet/triton.py; the interpreter on CPU) against the torch reference at
odd sizes, with tiles smaller than the matrix, graded, rank-deficient and zero columns (small sizes:
the interpreter is slow). On a GPU the same comparisons run at larger sizes (marked gpu)."""

import os
import subprocess
import sys

import pytest
import torch

from fastgeom.ops import logdet
from fastgeom.ops.logdet import reference

T = pytest.importorskip("fastgeom.ops.logdet.triton")
D = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(A, R1, p1, rtol=1e-12):
    R2, p2 = reference.qrcp(A)
    assert R1.shape == R2.shape == (A.shape[0], min(A.shape[1:]), A.shape[2]) and R1.dtype == D
    assert torch.equal(p1, p2), (p1, p2)
    assert torch.equal(R1, torch.triu(R1))
    scale = R2.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    assert ((R1 - R2).abs() <= rtol * scale).all()
    return R2


@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 5, 7), (1, 1, 1), (2, 1, 4), (2, 4, 1), (0, 3, 3), (1, 6, 6)])
def test_matches_reference_odd_sizes(shape):
    g = torch.Generator().manual_seed(sum(shape))
    A = torch.randn(*shape, generator=g, dtype=D)
    A0 = A.clone()
    R1, p1 = T.qrcp(A, block_m=4, block_n=4)  # several tiles per row and column
    assert torch.equal(A, A0)  # input untouched
    _check(A, R1, p1)
    if shape[0] and shape[1] >= shape[2]:  # A[:, :, perm] = Q R: same Gram matrix
        Ap = torch.gather(A, 2, p1[:, None, :].expand(-1, shape[1], -1))
        torch.testing.assert_close(R1.mT @ R1, Ap.mT @ Ap, rtol=1e-12, atol=1e-12)


def test_graded_zero_column_relative_accuracy():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(2, 8, 5, generator=g, dtype=D) * torch.logspace(0, -250, 5, dtype=D)  # down to 1e-250
    A[:, :, 2] = 0
    R1, p1 = T.qrcp(A, block_m=4, block_n=2)
    R2 = _check(A, R1, p1)
    assert (p1[:, -1] == 2).all()  # the zero column is pivoted last
    d1, d2 = torch.diagonal(R1, dim1=-2, dim2=-1), torch.diagonal(R2, dim1=-2, dim2=-1)
    assert (d1[:, -1] == 0).all()
    torch.testing.assert_close(d1[:, :4] / d2[:, :4], torch.ones(2, 4, dtype=D), rtol=1e-13, atol=0)


def test_rank_deficient_and_float32_noncontiguous():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 7, 3, generator=g, dtype=D) @ torch.randn(2, 3, 6, generator=g, dtype=D)  # rank 3
    R1, p1 = T.qrcp(A, block_m=4, block_n=4)
    R2, p2 = reference.qrcp(A)
    # beyond the rank the pivots pick among rounding-level columns: compare the rank-3 part only
    assert torch.equal(p1[:, :3], p2[:, :3])
    torch.testing.assert_close(R1[:, :3, :3], R2[:, :3, :3], rtol=1e-12, atol=1e-12)
    Ap = torch.gather(A, 2, p1[:, None, :].expand(-1, 7, -1))
    torch.testing.assert_close(R1.mT @ R1, Ap.mT @ Ap, rtol=1e-12, atol=1e-12)
    d = torch.diagonal(R1, dim1=-2, dim2=-1).abs()
    assert (d[:, 3:] <= 1e-13 * d[:, :1]).all() and (d[:, :3] > 1e-3 * d[:, :1]).all()
    X = torch.randn(2, 10, 12, generator=g)[:, ::2, 1::2]  # float32, non-contiguous (2, 5, 6)
    R1, p1 = T.qrcp(X, block_m=2, block_n=4)
    _check(X, R1, p1)


def test_dispatch_names_the_triton_candidate():
    """backend='triton' runs the kernel (interpreter on CPU); 'cuda' asks for a GPU and says why not."""
    A = torch.randn(1, 4, 3, dtype=D)
    R1, p1 = logdet.qrcp(A, backend="triton")
    _check(A, R1, p1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' is not usable here for op 'qrcp'"):
            logdet.qrcp(A, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(5, 67, 33), (3, 33, 67), (2, 300, 129), (7, 1, 9)])
def test_gpu_matches_reference(shape):
    A = torch.randn(*shape, dtype=D) * torch.logspace(0, -60, shape[2], dtype=D)
    A[:, :, 1] = 0
    R1, p1 = T.qrcp(A.cuda())
    _check(A, R1.cpu(), p1.cpu(), rtol=1e-11)
    R2, _ = logdet.qrcp(A.cuda(), backend="cuda")
    torch.testing.assert_close(R2.cpu(), R1.cpu(), rtol=0, atol=0)


_COMPILE_SCRIPT = r"""
import triton
from triton.backends import backends
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgeom.ops.logdet.triton import _qrcp_kernel
if "nvidia" not in backends:
    print("SKIP triton without its CUDA backend")
    raise SystemExit(0)
sig = {"a_ptr": "*fp64", "v_ptr": "*fp64", "nrm_ptr": "*fp64", "perm_ptr": "*i64", "m": "i32", "n": "i32",
       "kmax": "i32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
src = ASTSource(fn=_qrcp_kernel, signature=sig, constexprs={"BLOCK_M": 32, "BLOCK_N": 32})
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("OK", "cubin" in k.asm, k.asm["ptx"].count("bar.sync"))
"""


@pytest.mark.slow
def test_compiles_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler: compile the kernel to a cubin for sm_90
    (H100/H200) ahead of time, no GPU needed (a process without TRITON_INTERPRET), and check that it
    synchronises its phases (bar.sync)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    ok, has_cubin, n_sync = out.stdout.split()[-3:]
    assert has_cubin == "True" and int(n_sync) >= 8, out.stdout
