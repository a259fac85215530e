"""logvol(target="sphere") (round-sphere pullback through phi/|phi|) against a brute force."""

import math

import pytest
import torch

import fastgeom as fg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(d_in, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(9, d_in, generator=g, dtype=torch.float64)
    b1 = torch.randn(9, generator=g, dtype=torch.float64)
    W2 = torch.randn(d_out, 9, generator=g, dtype=torch.float64)
    b2 = torch.randn(d_out, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x @ W1.T + b1) @ W2.T + b2


def _brute(phi, x):
    """J projected onto the tangent space of the sphere at phi(x), divided by |phi(x)|; log pseudo-det
    over its min(d_in, d_out - 1) non-zero singular values."""
    out = []
    for xi in x:
        f = phi(xi[None])[0]
        J = torch.autograd.functional.jacobian(lambda z: phi(z[None])[0], xi).reshape(len(f), -1)
        u = f / f.norm()
        P = torch.eye(len(f), dtype=f.dtype) - torch.outer(u, u)
        s = torch.linalg.svdvals(P @ J / f.norm())
        r = min(J.shape[1], len(f) - 1)
        assert s[r:].abs().max().item() < 1e-10 if len(s) > r else True  # the known null direction
        out.append(torch.log(s[:r]).sum())
    return torch.stack(out)


@pytest.mark.parametrize("d_in,d_out", [(7, 3), (3, 7), (5, 6), (4, 4), (2, 2), (6, 12)])
@pytest.mark.parametrize("method", ["dense", "streamed"])
def test_sphere_vs_bruteforce(d_in, d_out, method):
    phi = _mlp(d_in, d_out, seed=d_in * 10 + d_out)
    x = torch.randn(3, d_in, dtype=torch.float64)
    got, diag = fg.logvol(None, x, layer=phi, target="sphere", method=method, return_diagnostics=True)
    torch.testing.assert_close(got, _brute(phi, x), rtol=1e-10, atol=1e-10)
    assert diag.full_rank == min(d_in, d_out - 1) and bool((diag.rank == diag.full_rank).all())
    sv = fg.spectrum(None, x, layer=phi, target="sphere", method=method)
    r = min(d_in, d_out - 1)
    torch.testing.assert_close(torch.log(sv[:, :r]).sum(1), got, rtol=1e-10, atol=1e-10)
    assert bool((sv[:, r:] == 0).all())  # the known null direction (phi itself) is reported as 0


def test_sphere_scale_invariance_and_difference():
    """Rescaling phi leaves the sphere pullback unchanged but shifts the Euclidean one by rank * log c."""
    phi = _mlp(6, 4, seed=0)
    x = torch.randn(4, 6, dtype=torch.float64)
    c = 3.7
    s1 = fg.logvol(None, x, layer=phi, target="sphere")
    s2 = fg.logvol(None, x, layer=lambda z: c * phi(z), target="sphere")
    torch.testing.assert_close(s1, s2, rtol=1e-12, atol=1e-11)
    e1 = fg.logvol(None, x, layer=phi)
    e2 = fg.logvol(None, x, layer=lambda z: c * phi(z))
    torch.testing.assert_close(e2 - e1, torch.full_like(e1, 4 * math.log(c)), rtol=1e-10, atol=1e-10)
    assert (s1 - e1).abs().min() > 1e-3


def test_sphere_on_a_resnet_backbone():
    from fastgeom.models import cifar_resnet

    m = cifar_resnet(18, "gelu", None, width=4).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)

    def phi(z):
        return m(z).reshape(len(z), -1)

    torch.testing.assert_close(fg.logvol(m, x, layer="avgpool", target="sphere"), _brute(phi, x), rtol=1e-9, atol=1e-9)
