"""bench/logvol.py times what it says: every row is a public call, and all exact rows agree."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import logvol as bench_logvol  # noqa: E402


@pytest.mark.parametrize("name", ["mlp64", "resnet18w8"])
def test_every_method_is_a_public_call_with_the_same_values(name):
    model, shape = bench_logvol.model_and_shape(name, 8)
    x = bench_logvol.points(3, shape).double()
    model = model.double()
    ref = bench_logvol.call("jacrev", model, x)["values"]
    assert len(ref) == 3
    for m in ("jacrev@4", "auto", "dense", "streamed", "streamed-fwd", "linearized"):
        r = bench_logvol.measured_call(m, model, x)
        assert r["values"] == pytest.approx(ref, rel=1e-9, abs=1e-9), m
        assert r["seconds"] > 0 and r["peak_bytes"] >= 0
        if m in ("dense", "streamed", "linearized"):
            assert r["ran"].startswith(m), (m, r["ran"])
        if m.endswith("-fwd"):
            assert "forward" in r["ran"], r["ran"]


def test_auto_ratio_uses_the_fastest_exact_method():
    ms = {
        "auto": {"status": "ok", "times": [1.1, 1.3, 1.2], "cpu_times": [1.0, 1.3, 1.25]},
        "dense": {"status": "ok", "times": [1.0], "cpu_times": [1.0]},
        "streamed": {"status": "ok", "times": [2.0], "cpu_times": [0.9]},
        "linearized": {"status": "out of memory", "times": []},
        "jacrev@64": {"status": "ok", "times": [0.1], "cpu_times": [0.1]},
    }
    ratio, best = bench_logvol.auto_ratio(ms)
    assert best == "dense" and ratio == pytest.approx(1.2)
    cratio, cbest = bench_logvol.auto_ratio(ms, "cpu_times")
    assert cbest == "streamed" and cratio == pytest.approx(1.25 / 0.9)
    row = bench_logvol.auto_table({"m": {"methods": ms, "shape": [4], "points": 2}}).splitlines()[-1]
    assert "| streamed | 1.39x | **no** | 1.20x |" in row
