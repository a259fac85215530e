"""The reusable handle: build once, apply many; memory flat in the number of points; loud failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom.engine import choice, linear_net

D = torch.float64


def mlp(d_in, d_out, hidden=9, act=nn.Tanh):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, d_out)).to(D)


def test_handle_equals_functional_api_and_reuses_its_engine(monkeypatch):
    m = mlp(7, 4)
    x = torch.randn(5, 7, dtype=D)
    g = fg.Geometry(m)
    lv = g.logvol(x)
    torch.testing.assert_close(lv, fg.logvol(m, x), rtol=1e-13, atol=0)
    torch.testing.assert_close(lv, fg.logvol(m, x, method="dense"), rtol=1e-12, atol=0)
    torch.testing.assert_close(g.spectrum(x), fg.spectrum(m, x), rtol=1e-13, atol=0)
    torch.testing.assert_close(g.jacobian(x), fg.jacobian(m, x, method="dense"), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g.metric(x), fg.metric(m, x), rtol=1e-13, atol=1e-15)
    # later calls with the same input shape, device and dtype probe and select nothing new
    calls = {"probe": 0, "select": 0}
    real_select = choice.select

    def counting_select(*a, **k):
        calls["select"] += 1
        return real_select(*a, **k)

    monkeypatch.setattr("fastgeom.geometry.select", counting_select)
    monkeypatch.setattr(
        "fastgeom.geometry.saved_bytes_one_point", lambda *a: calls.__setitem__("probe", calls["probe"] + 1) or (1, 1)
    )
    for _ in range(3):
        g.logvol(torch.randn(3, 7, dtype=D))
    assert calls == {"probe": 0, "select": 0}
    g.logvol(torch.randn(3, 7, dtype=torch.float32).to(D).reshape(3, 7))  # same key
    assert calls["select"] == 0
    g.free()
    g.logvol(x)
    assert calls == {"probe": 1, "select": 1}
    assert "Geometry(Sequential" in repr(g)


def test_diagnostics_record_what_ran():
    m = mlp(8, 3)
    x = torch.randn(4, 8, dtype=D)
    _, d = fg.Geometry(m, method="streamed").logvol(x, return_diagnostics=True, chunk_size=2)
    assert (d.method, d.mode, d.chunk, d.points_per_batch, d.events) == ("streamed", "reverse", 2, 4, ())
    _, d = fg.Geometry(m, method="dense").logvol(x, return_diagnostics=True)
    assert (d.method, d.mode) == ("dense", "jacrev")
    _, d = fg.Geometry(m, mode="forward").logvol(x, return_diagnostics=True)
    assert d.mode == "forward"
    with pytest.raises(ValueError, match="mode must be"):
        fg.Geometry(m, mode="sideways")
    with pytest.raises(ValueError, match="chunk_size applies to the streamed"):
        fg.logvol(m, x, method="dense", chunk_size=2)
    with pytest.raises(ValueError, match="budget must be a positive number"):
        fg.Geometry(m, budget=-1)
    with pytest.raises(ValueError, match="rank_tol applies to the exact methods"):
        fg.logvol(m, x, method="randomized", rank_tol=1e-3)


def test_auto_failure_of_the_fast_path_warns_or_raises_when_strict(monkeypatch):
    m = mlp(8, 3)
    x = torch.randn(3, 8, dtype=D)
    monkeypatch.setattr(choice, "LINEARIZE_MIN_SECONDS", 0.0)  # tried after the first of 3 one-row chunks

    def broken(*a, **k):
        raise IndexError("a bug in the linearised engine")

    monkeypatch.setattr(choice, "validated_linearize", broken)
    monkeypatch.delenv("FASTGEOM_STRICT", raising=False)
    with pytest.warns(choice.EngineWarning, match="IndexError: a bug in the linearised engine"):
        lv, d = fg.logvol(m, x, return_diagnostics=True, chunk_size=1)
    assert d.method == "streamed" and "failed" in d.reason
    torch.testing.assert_close(lv, fg.logvol(m, x, method="dense"), rtol=1e-12, atol=0)
    monkeypatch.setenv("FASTGEOM_STRICT", "1")
    with pytest.raises(IndexError, match="a bug"):
        fg.logvol(m, x, chunk_size=1)

    def cannot(*a, **k):
        raise linear_net.LinearizeError("not this model")

    monkeypatch.setattr(choice, "validated_linearize", cannot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, d = fg.logvol(m, x, return_diagnostics=True, chunk_size=1)  # the expected failure: quiet, recorded
    assert d.method == "streamed" and "not this model" in d.reason


def test_nonfinite_points_are_nan_and_named():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).float()
    x = torch.randn(4, 3, dtype=D)
    x[2, 0] = 1e39  # finite in float64, overflows the float32 model
    with pytest.warns(fg.NonFiniteWarning, match=r"1 point\(s\).*2 \(cause: the input overflows torch.float32\)"):
        lv, d = fg.logvol(m, x, return_diagnostics=True)
    assert torch.isnan(lv[2]) and torch.isfinite(lv[[0, 1, 3]]).all() and d.nonfinite.tolist() == [0, 0, 1, 0]
    ref = fg.logvol(m, x[[0, 1, 3]])
    torch.testing.assert_close(lv[[0, 1, 3]], ref, rtol=1e-12, atol=0)
    # an infinite derivative: sqrt at 0
    f = lambda z: torch.sqrt(z.abs())  # noqa: E731
    z = torch.tensor([[0.0, 1.0], [4.0, 1.0]], dtype=D)
    with pytest.warns(fg.NonFiniteWarning, match="0 \\(cause: NaN/Inf in the Jacobian\\)"):
        lv = fg.logvol(None, z, f)
    assert torch.isnan(lv[0]) and torch.isfinite(lv[1])


def test_results_are_detached():
    m = mlp(5, 3)
    x = torch.randn(2, 5, dtype=D, requires_grad=True)
    for method in ("dense", "streamed", "auto"):
        lv = fg.logvol(m, x, method=method)
        assert not lv.requires_grad and lv.grad_fn is None


def test_batch_coupled_models_are_computed_point_by_point():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Tanh(), nn.Flatten()).to(D)
    x = torch.randn(3, 1, 5, 5, dtype=D)
    with pytest.warns(fg.checks.BatchCouplingWarning, match="batch size"):
        lv, d = fg.logvol(m, x, method="streamed", return_diagnostics=True, rank_tol=0.0)
    assert d.points_per_batch == 1
    alone = torch.cat([fg.logvol(m, x[i : i + 1], method="dense", rank_tol=0.0) for i in range(3)])
    torch.testing.assert_close(lv, alone, rtol=1e-10, atol=0)


def test_sphere_randomized_matches_exact_on_the_tangent_space():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6)).to(D)
    x = torch.randn(3, 12, dtype=D)
    exact = fg.logvol(m, x, target="sphere")
    est, err = fg.logvol(
        m, x, target="sphere", method="randomized", return_stderr=True, seed=0, options={"probes": 16, "steps": 6}
    )
    assert torch.isfinite(est).all()
    # 6 steps exhaust the 5-dimensional tangent space: the quadrature is exact, only probe noise is left
    assert ((est - exact).abs() <= 4 * err + 1e-8).all(), (est, exact, err)


_MEM_SCRIPT = r"""
import json, resource, sys, torch
import fastgeom as fg
torch.set_num_threads(1)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512))
B = int(sys.argv[1])
x = torch.randn(B, 512)
g = fg.Geometry(m, method="streamed", budget=64 * 2**20)
g.logvol(torch.randn(128, 512), rank_tol=0.0)  # warm up: the allocator reaches its steady state
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lv = g.logvol(x, rank_tol=0.0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "finite": bool(torch.isfinite(lv).all())}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_points(tmp_path):
    """512 -> 512 -> 512 tanh MLP, one logvol call, each B in its own process: before the streaming
    reduction the peak grew by 3.1 GB from B = 32 to B = 512 (every point's R factor was kept)."""
    script = tmp_path / "mem.py"
    script.write_text(_MEM_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for B in (32, 512):
        r = subprocess.run([sys.executable, str(script), str(B)], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[B] = json.loads(r.stdout.strip().splitlines()[-1])
        assert out[B]["finite"]
    grow_mb = (out[512]["peak_kb"] - out[32]["peak_kb"]) / 1024
    # the results themselves are 480 * 8 bytes; allow 64 MiB of allocator and batch-size noise
    assert grow_mb < 64, out
