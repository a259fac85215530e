"""fastgeom logvol / spectrum / plot: results against the API and a float64 dense reference,
slices, one-line errors with exit code 2, the run description that guards resumes, plots."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch
from _cli_helpers import PY, dense_logvol_spectrum, env, write_net

import fastgeom as fg
from fastgeom import cli, runio
from fastgeom.runio import ResultsCSV, read_csv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    net = write_net(d)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, 5, generator=g, dtype=torch.float64)
    torch.save(x, d / "x.pt")
    np.save(d / "x.npy", x.numpy())
    return {"dir": d, "net": net, "x": x, "pt": str(d / "x.pt"), "npy": str(d / "x.npy")}


def _model(files, **kw):
    torch.manual_seed(0)  # the CLI seeds with --seed (default 0) before building the model
    return runio.build_model(f"{files['net']}:mlp", kw)


def _run(argv, capsys=None):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


@pytest.mark.parametrize("layer,src", [("2", "pt"), (None, "npy")])  # immersion (7 > 5), submersion (3 < 5)
def test_logvol_matches_api_and_dense_reference(files, tmp_path, capsys, layer, src):
    out = tmp_path / "lv.csv"
    argv = [
        "logvol",
        "--model",
        f"{files['net']}:mlp",
        "--points",
        files[src],
        "--out",
        out,
        "--batch-size",
        4,
        "--quiet",
        "--diagnostics",
    ] + (["--layer", layer] if layer else [])
    rc, cap = _run(argv, capsys)
    assert rc == 0 and cap.out == "" and cap.err == ""  # --quiet: no bar, no summary
    cols, a = read_csv(str(out))
    assert cols == ["index", "logvol", "rank", "rank_structural", "cond_est", "n_rounding"]
    assert a[:, 0].tolist() == list(range(13))
    model = _model(files)
    x = files["x"]
    api = fg.logvol(model, x, layer=layer)
    np.testing.assert_allclose(a[:, 1], api.numpy(), rtol=1e-13, atol=1e-13)
    ref, s = dense_logvol_spectrum(model, x, None if layer is None else int(layer))
    np.testing.assert_allclose(a[:, 1], ref.numpy(), rtol=1e-10, atol=1e-10)
    assert (a[:, 2] == min(5, 7 if layer else 3)).all()
    assert (a[:, 4] >= 1).all()


def test_spectrum_and_dtype(files, tmp_path, capsys):
    out = tmp_path / "s.csv"
    rc, _ = _run(
        [
            "spectrum",
            "--model",
            f"{files['net']}:mlp",
            "--model-args",
            '{"width": 9}',
            "--points",
            files["pt"],
            "--layer",
            "2",
            "--out",
            out,
            "--batch-size",
            5,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    cols, a = read_csv(str(out))
    assert cols == ["index"] + [f"s{i}" for i in range(1, 6)]
    _, s = dense_logvol_spectrum(_model(files, width=9), files["x"], 2)
    np.testing.assert_allclose(a[:, 1:], s.numpy(), rtol=1e-10)
    # --k and a float32 network pass (accumulation stays float64): close to the float64 values
    out2 = tmp_path / "s32.csv"
    rc, _ = _run(
        [
            "spectrum",
            "--model",
            f"{files['net']}:mlp",
            "--model-args",
            '{"width": 9}',
            "--points",
            files["pt"],
            "--layer",
            "2",
            "--out",
            out2,
            "--k",
            2,
            "--dtype",
            "float32",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    cols2, b = read_csv(str(out2))
    assert cols2 == ["index", "s1", "s2"]
    np.testing.assert_allclose(b[:, 1:], s[:, :2].numpy(), rtol=1e-4)


def test_path_and_plane_slices(files, tmp_path, capsys):
    from fastgeom import slices

    model = _model(files)
    x = files["x"]
    out = tmp_path / "path.csv"
    rc, _ = _run(
        [
            "logvol",
            "--model",
            f"{files['net']}:mlp",
            "--data",
            files["pt"],
            "--path",
            "3,8",
            "--grid",
            11,
            "--out",
            out,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    cols, a = read_csv(str(out))
    assert cols == ["index", "logvol", "rank", "t"]
    np.testing.assert_allclose(a[:, 3], np.arange(11) / 11, rtol=0, atol=1e-15)
    ref, _ = dense_logvol_spectrum(model, slices.path(x[3], x[8], 11))
    np.testing.assert_allclose(a[:, 1], ref.numpy(), rtol=1e-10, atol=1e-10)
    out = tmp_path / "plane.csv"
    rc, _ = _run(
        [
            "logvol",
            "--model",
            f"{files['net']}:mlp",
            "--data",
            files["pt"],
            "--plane",
            "0,4,12",
            "--grid",
            7,
            "--hull",
            "convex",
            "--out",
            out,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    cols, a = read_csv(str(out))
    pl = slices.plane(x[0], x[4], x[12], 7, hull="convex")
    assert cols == ["index", "logvol", "rank", "a", "b"] and a.shape[0] == pl.points.shape[0] < 49
    np.testing.assert_allclose(a[:, 3], pl.a.numpy())
    np.testing.assert_allclose(a[:, 4], pl.b.numpy())
    ref, _ = dense_logvol_spectrum(model, pl.points)
    np.testing.assert_allclose(a[:, 1], ref.numpy(), rtol=1e-10, atol=1e-10)


def test_torchvision_cifar_stem_resolves(files):
    m = runio.build_model("resnet18", cifar=True, activation="gelu")
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity) and m.fc.out_features == 10
    assert not any(isinstance(t, torch.nn.ReLU) for t in m.modules())
    assert runio.build_model("resnet18", num_classes=7).conv1.kernel_size == (7, 7)


def _bad_files(d, files):
    """name -> (argv tail, text expected in the error)."""
    corrupt = d / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive" * 3)
    other = d / "other.pt"
    torch.save(runio.build_model(f"{files['net']}:mlp", {"width": 4}).state_dict(), other)
    prefixed = d / "ddp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in _model(files).state_dict().items()}}, prefixed)
    wide = d / "wide.pt"
    torch.save(torch.randn(6, 4, dtype=torch.float64), wide)
    flat = d / "flat.npy"
    np.save(flat, np.zeros(5))
    ints = d / "ints.npy"
    np.save(ints, np.zeros((3, 5), dtype=np.int64))
    nan = d / "nan.pt"
    torch.save(torch.tensor([[0.0] * 5, [float("nan")] * 5]), nan)
    dct = d / "dict.pt"
    torch.save({"x": torch.zeros(2, 5)}, dct)
    pts = ["--points", files["pt"]]
    net = f"{files['net']}:mlp"
    return {
        "corrupt checkpoint": (["--model", net, "--checkpoint", corrupt] + pts, ["corrupt.pt", "corrupt"]),
        "mismatched checkpoint": (
            ["--model", net, "--checkpoint", other] + pts,
            ["other.pt", "does not match", "'0.weight' is (4,5) in the checkpoint but (7,5)"],
        ),
        "missing checkpoint": (["--model", net, "--checkpoint", d / "nope.pt"] + pts, ["nope.pt", "not found"]),
        "wrong-shape points": (["--model", net, "--points", wide], ["wide.pt", "do not fit", "(4,)"]),
        "1-d points": (["--model", net, "--points", flat], ["flat.npy", "shape (5,)"]),
        "integer points": (["--model", net, "--points", ints], ["ints.npy", "integer dtype"]),
        "nan points": (["--model", net, "--points", nan], ["nan.pt", "NaN or Inf at index 1"]),
        "dict points": (["--model", net, "--points", dct], ["dict.pt", "holds a dict"]),
        "unknown factory": (["--model", f"{files['net']}:mpl"] + pts, ["unknown factory 'mpl'", "did you mean mlp"]),
        "unknown module": (["--model", "no_such_module_xyz:make"] + pts, ["no_such_module_xyz", "cannot import"]),
        "not a module": (["--model", f"{files['net']}:not_a_module"] + pts, ["returned a int"]),
        "unknown torchvision": (["--model", "resnet343"] + pts, ["unknown model", "resnet34"]),
        "unknown layer": (["--model", net, "--layer", "hidden"] + pts, ["unknown layer 'hidden'"]),
        "path index": (["--model", net, "--data", files["pt"], "--path", "0,13"], ["x.pt", "beyond its 13 points"]),
        "path without data": (["--model", net, "--path", "0,1"], ["--path needs --data"]),
        "two sources": (["--model", net, "--plane", "0,1,2"] + pts, ["exactly one of"]),
        "bad pool": (["--model", net, "--pool", "2y"] + pts, ["--pool '2y'"]),
        "bad model args": (["--model", net, "--model-args", "[1]"] + pts, ["must be a JSON object"]),
        "factory kwargs": (["--model", net, "--model-args", '{"depth": 2}'] + pts, ["calling mlp", "depth"]),
    }


def test_bad_input_one_line_exit_2(files, tmp_path, capsys):
    ok = tmp_path / "ok.csv"
    cases = _bad_files(tmp_path, files)
    for name, (tail, needles) in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.csv"
        rc, cap = _run(["logvol", "--out", out, "--quiet", *tail], capsys)
        err = cap.err.strip()
        assert rc == 2, (name, err)
        assert err.startswith("fastgeom: error: ") and "\n" not in err, (name, err)
        for n in needles:
            assert n in err, (name, n, err)
        assert not out.exists(), name  # nothing is written for a run that cannot start
    # a DDP/wrapped checkpoint of the right model loads
    rc, cap = _run(
        [
            "logvol",
            "--model",
            f"{files['net']}:mlp",
            "--checkpoint",
            tmp_path / "ddp.pt",
            "--points",
            files["pt"],
            "--out",
            ok,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, cap.err


def test_argparse_errors_are_one_line(capsys):
    for argv in (
        ["logvol"],
        ["logvol", "--model", "m:f", "--out", "o.csv", "--method", "magic"],
        ["logvol", "--model", "m:f", "--out", "o.csv", "--batch-size", "x"],
        ["nosuchcmd"],
    ):
        with pytest.raises(SystemExit) as ei:
            cli.main(argv)
        assert ei.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "error:" in err and "\n" not in err, err


def test_resume_refuses_other_settings(files, tmp_path, capsys):
    out = tmp_path / "r.csv"
    base = ["logvol", "--model", f"{files['net']}:mlp", "--points", files["pt"], "--out", out, "--quiet"]
    assert _run(base + ["--layer", "2"], capsys)[0] == 0
    before = out.read_bytes()
    rc, cap = _run(base + ["--layer", "4"], capsys)
    assert rc == 2 and "different run (layer: '2' there, '4' now)" in cap.err and "\n" not in cap.err.strip()
    rc, cap = _run(["spectrum"] + base[1:] + ["--layer", "2"], capsys)
    assert rc == 2 and "r.csv" in cap.err
    assert out.read_bytes() == before
    # same settings: nothing to do, file unchanged
    assert _run(base + ["--layer", "2"], capsys)[0] == 0
    assert out.read_bytes() == before


@pytest.mark.slow
def test_exit_code_2_without_traceback_subprocess(files, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(range(256)) * 2)  # not a zip, not a pickle
    r = subprocess.run(
        [
            PY,
            "-m",
            "fastgeom",
            "logvol",
            "--model",
            f"{files['net']}:mlp",
            "--checkpoint",
            str(bad),
            "--points",
            files["pt"],
            "--out",
            str(tmp_path / "o.csv"),
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "bad.pt" in r.stderr


def _write_csv(path, cols, rows):
    with ResultsCSV(str(path), cols) as c:
        c.append(rows)


def test_plot_path_plane_spectrum(tmp_path, capsys):
    import matplotlib.image as mpimg

    t = np.arange(9) / 9
    _write_csv(tmp_path / "p.csv", ["logvol", "rank", "t"], [[i, math.sin(v), 2, v] for i, v in enumerate(t)])
    ax = np.linspace(-1, 1, 5)
    rows = [[k, a + 10 * b, 2, a, b] for k, (a, b) in enumerate((a, b) for a in ax for b in ax) if a + b < 0.6]
    _write_csv(tmp_path / "q.csv", ["logvol", "rank", "a", "b"], rows)
    _write_csv(tmp_path / "s.csv", ["s1", "s2", "s3"], [[i, 3.0, 1.0, 10.0**-i] for i in range(4)])
    _write_csv(tmp_path / "st.csv", ["s1", "s2", "t"], [[i, 3.0 + i, 1.0, i / 5] for i in range(5)])
    for name in ("p", "q", "s", "st"):
        rc, cap = _run(["plot", tmp_path / f"{name}.csv", "--log10"], capsys)
        assert rc == 0 and f"{name}.png" in cap.out
        img = mpimg.imread(tmp_path / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0.01
    rc, cap = _run(["plot", tmp_path / "q.csv", "--column", "nope"], capsys)
    assert rc == 2 and "no column 'nope'" in cap.err


def test_plane_image_layout():
    ax = np.array([-1.0, 0.0, 1.0])
    A, B = np.meshgrid(ax, ax, indexing="ij")
    A, B = A.ravel(), B.ravel()
    keep = A + B <= 0
    img, ext = cli.plane_image(A[keep], B[keep], (A + 10 * B)[keep])
    assert ext == (-1.5, 1.5, -1.5, 1.5)
    for i, a in enumerate(ax):
        for j, b in enumerate(ax):
            assert np.isnan(img[j, i]) if a + b > 0 else img[j, i] == a + 10 * b


def test_input_shape_and_randomized(files, tmp_path, capsys):
    import importlib.util

    base = ["logvol", "--model", f"{files['net']}:mlp", "--points", files["pt"], "--layer", "2", "--quiet"]
    assert _run(base + ["--out", tmp_path / "a.csv"], capsys)[0] == 0
    assert (
        _run(base + ["--out", tmp_path / "b.csv", "--input-shape", "1,5"], capsys)[0] == 0
    )  # Linear acts on the last dim
    (_, a), (_, b) = read_csv(str(tmp_path / "a.csv")), read_csv(str(tmp_path / "b.csv"))
    np.testing.assert_allclose(a, b, rtol=1e-13)
    rc, cap = _run(base + ["--out", tmp_path / "c.csv", "--input-shape", "2,3"], capsys)
    assert rc == 2 and "--input-shape 2,3 needs 6" in cap.err
    rc, cap = _run(base + ["--out", tmp_path / "r.csv", "--method", "randomized", "--seed", "3"], capsys)
    if importlib.util.find_spec("fastgeom.randomized") is None:
        assert rc == 2 and "fastgeom.randomized is not part of this installation" in cap.err
    else:  # an estimate with an error bar, near the exact value
        assert rc == 0, cap.err
        cols, r = read_csv(str(tmp_path / "r.csv"))
        assert cols == ["index", "logvol", "stderr"] and (r[:, 2] >= 0).all()
        assert (np.abs(r[:, 1] - a[:, 1]) <= 6 * r[:, 2] + 1e-6).all()


def test_error_during_the_run_is_one_line(files, tmp_path, capsys):
    rc, cap = _run(
        [
            "logvol",
            "--model",
            f"{files['net']}:dead",
            "--points",
            files["pt"],
            "--out",
            tmp_path / "d.csv",
            "--batch-size",
            4,
            "--quiet",
        ],
        capsys,
    )
    err = cap.err.strip()
    assert rc == 2 and "\n" not in err and "points 0..3: " in err and "does not depend on the input" in err


def test_conv_pool_checkpoint(files, tmp_path, capsys):
    """--pool and --checkpoint reach fastgeom.logvol: a CNN layer pooled to 16 numbers, weights from a file."""
    torch.manual_seed(0)
    model = runio.build_model(f"{files['net']}:conv")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.7).add_(0.05)  # weights that differ from the factory's
    torch.save(model.state_dict(), tmp_path / "ck.pt")
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "img.pt")
    out = tmp_path / "c.csv"
    rc, cap = _run(
        [
            "logvol",
            "--model",
            f"{files['net']}:conv",
            "--checkpoint",
            tmp_path / "ck.pt",
            "--layer",
            "3",
            "--pool",
            "16",
            "--points",
            tmp_path / "img.pt",
            "--out",
            out,
            "--batch-size",
            2,
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, cap.err
    _, a = read_csv(str(out))
    ref = fg.logvol(model, x, layer="3", pool=16, method="dense")
    np.testing.assert_allclose(a[:, 1], ref.numpy(), rtol=1e-11, atol=1e-11)
    assert (a[:, 2] == 16).all()
    fresh = fg.logvol(runio.build_model(f"{files['net']}:conv"), x, layer="3", pool=16)
    assert not np.allclose(a[:, 1], fresh.numpy())  # the checkpoint was used
