"""`fastgeom curvature` / `fastgeom geodesic` (fastgeom/cli_curvature.py) against the API, resume, one-line
errors; `fastgeom plot` on a curvature CSV (diverging map centred at 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli_helpers import write_net

import fastgeom as fg
from fastgeom import cli, runio, slices
from fastgeom.plot import value_colors
from fastgeom.runio import read_csv
from fastgeom.surfaces import plane_directions


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clicurv")
    net = write_net(d)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    torch.save(x, d / "x.pt")
    return {"dir": d, "net": net, "x": x, "pt": str(d / "x.pt")}


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr()


def _model(files, **kw):
    torch.manual_seed(0)
    return runio.build_model(f"{files['net']}:mlp", kw)


def test_plane_curvature_matches_api_and_resumes(files, tmp_path, capsys):
    out = tmp_path / "k.csv"
    argv = [
        "curvature",
        "--model",
        f"{files['net']}:mlp",
        "--data",
        files["pt"],
        "--plane",
        "0,2,5",
        "--grid",
        5,
        "--out",
        out,
        "--batch-size",
        4,
        "--quiet",
    ]
    rc, cap = _run(argv, capsys)
    assert rc == 0 and cap.err == ""
    cols, a = read_csv(str(out))
    assert cols == ["index", "K", "area", "a", "b"] and a.shape[0] == 25
    x = files["x"]
    pl = slices.plane(x[0], x[2], x[5], 5)
    u, v = plane_directions(x[0], x[2], x[5])
    # the directions are those of the plane's parametrisation
    torch.testing.assert_close(pl.points[1] - pl.points[0], (pl.b[1] - pl.b[0]) * v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pl.points[5] - pl.points[0], (pl.a[5] - pl.a[0]) * u, rtol=1e-12, atol=1e-12)
    K, g = fg.gaussian_curvature(_model(files), pl.points, u, v, return_metric=True)  # a submersion: 5 -> 3
    np.testing.assert_allclose(a[:, 1], K.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a[:, 2], torch.linalg.det(g).sqrt().numpy(), rtol=1e-12)
    np.testing.assert_allclose(a[:, 3], pl.a.numpy())
    # resume: drop the last rows, rerun, same file
    lines = open(out).read().split("\n")
    with open(out, "w") as f:
        f.write("\n".join(lines[:10]) + "\n")
    rc, cap = _run(argv[:-1], capsys)
    assert rc == 0 and "16 computed now, 9 already there" in cap.out
    np.testing.assert_allclose(read_csv(str(out))[1], a, rtol=1e-12, atol=1e-13)  # other batches: rounding only


def test_scalar_and_errors(files, tmp_path, capsys):
    out = tmp_path / "r.csv"
    rc, cap = _run(
        [
            "curvature",
            "--scalar",
            "--model",
            f"{files['net']}:mlp",
            "--layer",
            "2",
            "--points",
            files["pt"],
            "--out",
            out,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    cols, a = read_csv(str(out))
    assert cols == ["index", "R"]
    np.testing.assert_allclose(a[:, 1], fg.scalar_curvature(_model(files), files["x"], "2").numpy(), rtol=1e-12)
    bad = [
        (["--scalar", "--points", files["pt"]], "submersion"),  # model output: 5 -> 3
        (["--points", files["pt"]], "needs --plane"),
        (["--data", files["pt"], "--plane", "0,1,1"], "do not span a plane"),
        (["--data", files["pt"], "--plane", "0,1,2", "--method", "dense"], "--method is a logvol/spectrum option"),
    ]
    for extra, msg in bad:
        rc, cap = _run(["curvature", "--model", f"{files['net']}:mlp", "--out", tmp_path / "bad.csv", *extra], capsys)
        assert rc == 2 and msg in cap.err and len(cap.err.strip().split("\n")) == 1, (extra, cap.err)


def test_geodesic_command(files, tmp_path, capsys):
    out = tmp_path / "g.pt"
    rc, cap = _run(
        [
            "geodesic",
            "--model",
            f"{files['net']}:mlp",
            "--layer",
            "2",
            "--data",
            files["pt"],
            "--path",
            "1,4",
            "--grid",
            6,
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 0
    summary = json.loads(cap.out.strip().split("\n")[-1])
    r = torch.load(out, weights_only=True)
    assert r["path"].shape == (7, 5) and torch.equal(r["path"][0], files["x"][1])
    L = fg.path_length(_model(files), r["path"], "2")
    assert abs(summary["length"] - float(L)) <= 1e-12 * float(L)
    assert abs(float(r["segment_lengths"].sum()) - float(L)) <= 1e-12 * float(L)
    rc, cap = _run(
        [
            "geodesic",
            "--model",
            f"{files['net']}:mlp",
            "--data",
            files["pt"],
            "--path",
            "1,4",
            "--out",
            tmp_path / "g.csv",
        ],
        capsys,
    )
    assert rc == 2 and ".pt" in cap.err


def test_plot_curvature_is_diverging_at_zero(tmp_path, capsys):
    import matplotlib.image as mpimg

    kw = value_colors("K", np.array([-0.5, 2.0, np.nan, 0.1]))
    assert kw["cmap"] == "RdBu_r" and kw["vmin"] == -kw["vmax"] and kw["vmax"] > 1.9
    assert value_colors("logvol", np.ones(3)) == {"cmap": "viridis"}
    ax = np.linspace(-1, 1, 6)
    with runio.ResultsCSV(str(tmp_path / "k.csv"), ["K", "area", "a", "b"]) as c:
        c.append([[k, a * b, 1.0, a, b] for k, (a, b) in enumerate((a, b) for a in ax for b in ax)])
    rc, cap = _run(["plot", tmp_path / "k.csv"], capsys)
    assert rc == 0 and "k.png" in cap.out
    assert mpimg.imread(tmp_path / "k.png").std() > 0.01
