"""Randomized estimators (fastgeom.randomized) against the exact float64 dense reference."""

import pytest
import torch

import fastgeom as fg
from fastgeom import randomized as R
from fastgeom.engine.streamed import AutogradPass
from fastgeom.features import FeatureMap


def _mlp(d_in, d_out, width=37, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.GELU(),
        torch.nn.Linear(width, d_out),
    ).double()


@pytest.mark.parametrize("d_in,d_out", [(11, 29), (43, 13)])
def test_probe_quadrature_exact_at_full_krylov(d_in, d_out):
    """With steps = n the Gauss quadrature is exact: each probe gives 1/2 z^T log(K^T K) z."""
    m = _mlp(d_in, d_out)
    x = torch.randn(5, d_in, dtype=torch.float64)
    J = fg.jacobian(m, x, method="dense")
    K = J if d_in <= d_out else J.mT
    n = K.shape[-1]
    ev, Q = torch.linalg.eigh(K.mT @ K)
    logA = Q @ torch.diag_embed(torch.log(ev)) @ Q.mT
    fmap = FeatureMap(m)
    g = torch.Generator().manual_seed(3)
    z = R._probes(g, 5, 4, n, False, x.device)
    est = R.logvol_probes(R.LinearOperator(AutogradPass(fmap, x, "reverse"), x, d_out), z, steps=n)
    ref = 0.5 * torch.einsum("bpi,bij,bpj->bp", z, logA, z)
    torch.testing.assert_close(est.e, ref, rtol=1e-9, atol=1e-9)
    assert est.passes == 4 * (2 * n - 1) == R.passes_logvol(n, 4, n)
    # the Hutchinson mean of all 2^n... is unbiased: its expectation is 1/2 tr log = exact logvol
    exact = fg.logvol(m, x, method="dense")
    torch.testing.assert_close(0.5 * torch.diagonal(logA, dim1=-2, dim2=-1).sum(-1), exact, rtol=1e-10, atol=1e-10)


def test_stderr_coverage_calibrated():
    """value +- 2 stderr covers the exact logvol at ~95% of many points (few probes, truncated Lanczos)."""
    m = _mlp(24, 17, seed=1)
    x = 1.5 * torch.randn(400, 24, dtype=torch.float64)
    exact = fg.logvol(m, x, method="dense")
    val, err = fg.logvol(m, x, method="randomized", return_stderr=True, seed=11, options={"probes": 6, "steps": 6})
    z = (val - exact).abs() / err
    cover = (z <= 2).double().mean().item()
    assert 0.88 <= cover <= 0.995, f"coverage {cover:.3f} at 2 stderr"
    # and the error bar is not uselessly wide: the estimate is informative
    assert err.median() < 0.2 * exact.abs().median()


def test_common_random_numbers_sharpen_differences():
    m = _mlp(30, 15, seed=2)
    t = torch.linspace(0, 1, 24, dtype=torch.float64)[:, None]
    x0, x1 = torch.randn(2, 30, dtype=torch.float64)
    x = (1 - t) * x0 + t * x1
    exact = fg.logvol(m, x, method="dense")
    opts = {"probes": 4, "steps": 8}
    ind = fg.logvol(m, x, method="randomized", seed=0, options=opts)
    crn = fg.logvol(m, x, method="randomized", seed=0, options={**opts, "common_random_numbers": True})
    d_ex, d_ind, d_crn = exact.diff(), ind.diff(), crn.diff()
    err_ind = (d_ind - d_ex).abs().mean()
    err_crn = (d_crn - d_ex).abs().mean()
    assert err_crn < 0.25 * err_ind, (err_crn, err_ind)


def test_seed_reproducible_and_options_checked():
    m = _mlp(9, 7)
    x = torch.randn(3, 9, dtype=torch.float64)
    a = fg.logvol(m, x, method="randomized", seed=5, options={"probes": 3, "steps": 4})
    b = fg.logvol(m, x, method="randomized", seed=5, options={"probes": 3, "steps": 4})
    c = fg.logvol(m, x, method="randomized", seed=6, options={"probes": 3, "steps": 4})
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match="unknown randomized option"):
        fg.logvol(m, x, method="randomized", options={"probe": 3})
    with pytest.raises(ValueError, match="probes"):
        fg.logvol(m, x, method="randomized", options={"probes": 0})
    with pytest.raises(ValueError, match="exceeds"):
        fg.spectrum(m, x, method="randomized", k=8)
    assert fg.logvol(m, x[:0], method="randomized").shape == (0,)


def test_rank_deficient_clear_error():
    W = torch.zeros(6, 5, dtype=torch.float64)
    W[0, 0] = 1.0
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="rank deficient"):
        fg.logvol(
            None,
            x,
            layer=lambda v: torch.cat([v @ W.T, torch.zeros(v.shape[0], 1, dtype=v.dtype)], 1),
            method="randomized",
            seed=0,
            options={"probes": 2, "steps": 3},
        )


@pytest.mark.parametrize("d_in,d_out", [(61, 23), (19, 53)])
def test_spectrum_block_krylov(d_in, d_out):
    m = _mlp(d_in, d_out, width=67, seed=4)
    x = torch.randn(4, d_in, dtype=torch.float64)
    exact = fg.spectrum(m, x, method="dense")[:, :5]
    est = fg.spectrum(m, x, k=5, method="randomized", seed=1, options={"oversample": 5, "iters": 3})
    assert est.shape == (4, 5)
    assert (est <= exact * (1 + 1e-12)).all()  # Ritz values are lower bounds
    torch.testing.assert_close(est, exact, rtol=1e-6, atol=0)
    # float32 network, float64 accumulation: still close to the float64 reference
    est32 = fg.spectrum(m.float(), x.float(), k=5, method="randomized", seed=1)
    torch.testing.assert_close(est32, exact, rtol=1e-4, atol=0)


@pytest.mark.gpu
def test_randomized_on_cuda_matches_cpu():
    """Same seed, same probes (drawn on the CPU): CUDA and CPU agree; float64 throughout."""
    m = _mlp(40, 12, seed=5)
    x = torch.randn(6, 40, dtype=torch.float64)
    opts = {"probes": 4, "steps": 12}
    cpu = fg.logvol(m, x, method="randomized", seed=2, return_stderr=True, options=opts)
    gpu = fg.logvol(m.cuda(), x.cuda(), method="randomized", seed=2, return_stderr=True, options=opts)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-9, atol=1e-9)
    exact = fg.logvol(m.cpu(), x, method="dense")
    exact_gpu = fg.logvol(m.cuda(), x.cuda(), method="streamed")
    torch.testing.assert_close(exact_gpu.cpu(), exact, rtol=1e-10, atol=1e-10)
    s = fg.spectrum(m.cuda(), x.cuda(), k=4, method="randomized", seed=0)
    torch.testing.assert_close(s.cpu(), fg.spectrum(m.cpu(), x, method="dense")[:, :4], rtol=1e-8, atol=0)
