"""bench/randomized_path.py: the randomized cost/accuracy curve is computed against the exact reference."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import randomized_path as rp  # noqa: E402

import fastgeom as fg  # noqa: E402
from fastgeom import randomized  # noqa: E402
from fastgeom.models import cifar_resnet  # noqa: E402


@pytest.fixture(scope="module")
def curve(one_torch_thread):
    torch.manual_seed(0)
    model = cifar_resnet("resnet18", activation="gelu", num_classes=None, width=2).double().eval()
    xs = rp.path_points((3, 8, 8), 4, seed=3).double()  # d_in 192, d_out 16: n = 16
    res = rp.run_curve(
        model,
        xs,
        k=4,
        logvol_grid=[(3, 16), (3, 3)],
        spectrum_grid=[(4, 1), (0, 1)],
        seed=5,
        groups=2,
        spectrum_points=3,
        progress=False,
    )
    return model, xs, res


def test_path_and_budgets():
    xs = rp.path_points((3, 5, 5), 7, seed=1)
    assert xs.shape == (7, 3, 5, 5)
    mid = (xs[0] + xs[-1]) / 2
    assert torch.allclose(xs[3], mid, atol=1e-6)  # straight line, both ends included
    with pytest.raises(ValueError, match="at least 2 points"):
        rp.path_points((3, 5, 5), 1)
    n = 2048
    for p, k in rp.logvol_budgets(n, probes=(4, 8), fractions=(1 / 8, 1 / 4)):
        frac = (1 + randomized.passes_logvol(n, p, k)) / (1 + n)
        assert 0.1 < frac < 0.3, (p, k, frac)
    sb = rp.spectrum_budgets(40, 32, oversample=(8, 16), iters=(1, 2, 3))
    assert sb == [(8, 1)]  # block capped at n = 40: every other budget is the same computation


def test_curve_structure_and_exact_reference(curve):
    model, xs, res = curve
    c = res["config"]
    assert (c["d_in"], c["d_out"], c["n"], c["k"], c["points"]) == (192, 16, 16, 4, 4)
    dense = fg.logvol(model, xs, method="dense", progress=False)
    assert torch.allclose(torch.tensor(res["exact"]["logvol"], dtype=torch.float64), dense, atol=1e-9)
    assert c["spectrum_points"] == [0, 2, 3]  # evenly spaced, ends included (round(1.5) = 2)
    s_dense = fg.spectrum(model, xs[[0, 2, 3]], method="dense", progress=False)[:, :4]
    assert torch.allclose(torch.tensor(res["exact"]["spectrum"], dtype=torch.float64), s_dense, rtol=1e-9)
    assert res["exact"]["passes"] == 17 and res["exact"]["time_logvol"] > 0
    assert [r["passes"] for r in res["logvol"]] == [1 + 3 * 5, 1 + 3 * 31]  # sorted by cost
    assert [r["passes"] for r in res["spectrum"]] == [1 + 4 * 3, 1 + 8 * 3]
    for r in res["logvol"] + res["spectrum"]:
        assert r["status"] == "ok" and r["time"] > 0 and math.isclose(r["pass_frac"], r["passes"] / 17)
    for r in res["logvol"]:
        assert 0 <= r["coverage"] <= 1 and r["stderr_mean"] > 0 and r["diff_err"] <= 2 * r["abs_err_max"]


def test_full_krylov_logvol_is_the_hutchinson_mean_of_exact_quadratic_forms(curve):
    """steps = n: Gauss quadrature is exact, so the bench's randomized values must equal the mean over the
    (common) probes of 1/2 z^T log(J J^T) z from the dense Jacobian; the errors follow from those values."""
    model, xs, res = curve
    row = res["logvol"][1]
    assert (row["probes"], row["steps"]) == (3, 16)
    J = fg.jacobian(model, xs, method="dense")  # (4, 16, 192): K = J^T, K^T K = J J^T
    w, Q = torch.linalg.eigh(J @ J.mT)
    A = Q @ torch.diag_embed(torch.log(w)) @ Q.mT
    z = randomized._probes(randomized._generator(5), 1, 3, 16, True, "cpu")[0]  # (3, 16), the seed's probes
    want = 0.5 * torch.einsum("pi,bij,pj->bp", z, A, z).mean(1)
    r = torch.tensor(row["values"], dtype=torch.float64)
    assert torch.allclose(r, want, atol=1e-8)
    e = torch.tensor(res["exact"]["logvol"], dtype=torch.float64)
    assert math.isclose(row["diff_err"], float(((r - r[0]) - (e - e[0])).abs().max()), rel_tol=1e-12)
    assert math.isclose(row["abs_err_max"], float((r - e).abs().max()), rel_tol=1e-12)
    assert math.isclose(row["step_err"], float(((r - e).diff()).abs().max()), rel_tol=1e-12)
    # fewer steps: quadrature error on top of the same probe error
    assert res["logvol"][0]["abs_err_mean"] > 1e-6


def test_spectrum_errors_vanish_when_the_krylov_space_is_everything(curve):
    _, _, res = curve
    small, full = res["spectrum"]  # block 4, q 1: 8 of 16 directions; block 8, q 1: all 16
    assert full["block"] * 2 == 16 and full["rel_err_max"] < 1e-9
    assert small["rel_err_max"] > 1e-6
    assert len(small["rel_err_per_point"]) == 3


def test_targets_and_report(curve, tmp_path):
    _, _, res = curve
    t = rp.targets(res)
    assert t["logvol"]["measured_within"] == 0 and not t["logvol"]["met"]  # 1/4 of 17 passes: nothing fits
    fake = {
        "logvol": [
            {"status": "ok", "pass_frac": 0.2, "diff_err": 0.05},
            {"status": "ok", "pass_frac": 0.5, "diff_err": 0.01},
        ],
        "spectrum": [{"status": "ok", "pass_frac": 0.2, "rel_err_max": 1e-4}, {"status": "skipped", "pass_frac": 0.1}],
    }
    ft = rp.targets(fake)
    assert ft["logvol"]["met"] and ft["logvol"]["min_frac_reaching_tol"] == 0.2
    assert not ft["spectrum"]["met"] and ft["spectrum"]["min_frac_reaching_tol"] == 0.2
    fig = tmp_path / "curve.png"
    rp.figure(res, str(fig), "test")
    assert fig.stat().st_size > 1000
    md = rp.markdown(res, "cmd", "device", "model", str(fig))
    assert "**NOT MEASURED** — impossible at this size" in md  # top-4 of n = 16 needs >= 13 of 17 passes
    assert "**NOT MEASURED** — no budget within that fraction in the grid" in md  # log-det: >= 16 of 17 passes
    assert md.count("\n| 3 x ") == 2 and md.count("\n| 4 x 1 |") == 1


def test_time_budget_and_empty_grid(one_torch_thread):
    model = cifar_resnet("resnet18", activation="gelu", num_classes=None, width=2).eval()
    xs = rp.path_points((3, 8, 8), 2, seed=0)
    res = rp.run_curve(
        model, xs, k=4, logvol_grid=[(1, 1)], spectrum_grid=[(4, 1)], groups=1, max_seconds=0.0, progress=False
    )
    assert len(res["exact"]["logvol"]) == 2  # the exact reference always runs
    assert res["exact"]["spectrum_status"].startswith("skipped")
    assert [r["status"].startswith("skipped") for r in res["logvol"] + res["spectrum"]] == [True, True]
    md = rp.markdown(res, "c", "d", "m", None)
    assert "exact spectrum skipped" in md and "NOT MEASURED** — the budgets within that fraction were skipped" in md
    assert "**NOT MEASURED** — impossible at this size" in md  # top-4 of n = 16 needs >= 13 of 17 passes

    res = rp.run_curve(model, xs, k=4, logvol_grid=[(1, 1)], spectrum_grid=[], groups=1, progress=False)
    assert res["exact"]["spectrum_status"] == "not run (no spectrum budgets)" and res["spectrum"] == []
    md = rp.markdown(res, "c", "d", "m", None)
    assert res["logvol"][0]["status"] == "ok" and "exact spectrum not run" in md
    assert "values (<= 0.001 relative at <= 0.125 of the passes): **NOT MEASURED** — no budgets in this run" in md
    with pytest.raises(ValueError, match="groups must be a positive int"):
        rp.run_curve(model, xs, groups=0)


def test_render_from_saved_json(curve, tmp_path, capsys):
    import json

    _, _, res = curve
    meta = {
        "arch": "resnet18",
        "size": 8,
        "dtype": "float64",
        "device": "test device",
        "label": "t",
        "argv": ["--label", "t"],
        "finished": False,
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(res, meta=meta)))
    rp.main(["--render", str(path), "--no-write", "--fig", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert out.startswith("**Partial run**") and "`python bench/randomized_path.py --label t` — test device" in out
    assert (tmp_path / "r.png").stat().st_size > 1000
