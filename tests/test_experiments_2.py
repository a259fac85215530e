"""Smoke runs of the CIFAR / SSL drivers in their --tiny configuration (CI-sized subset of --quick)."""

import json
import os
import warnings

import pytest
import torch

import fastgeom as fg
from experiments import _cifar_data as D
from experiments import _cifar_eval as E
from fastgeom.models import cifar_resnet
from fastgeom.slices import path

TINY = ["--tiny", "--standin", "--quiet", "--threads", "1"]


def _load(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _check_common(res, out, maps):
    assert res["mode"] == "quick" and res["config"]["size"] == "tiny"
    assert "stand-in" in res["summary"]["data"]  # the offline data set is named as such
    assert set(res["records"]) == {"epoch_0", "epoch_1"}
    for name in [
        "paths_over_epochs",
        "per_block_logvol",
        "spectra_over_epochs",
        "plane_convex_epoch1",
        "plane_affine_epoch1",
        "plane_same_class_epoch1",
    ] + [f"plane_affine_{m}_epoch1" for m in maps[1:]]:
        assert name in res["figures"] and os.path.getsize(os.path.join(out, name + ".png")) > 1000, name
    for key in ("epoch_0", "epoch_1"):
        assert os.path.exists(os.path.join(out, "ckpt", f"epoch_{int(key[6:]):06d}.pt"))
        geo = res["records"][key]["geometry"]
        for p in geo["paths"]:
            assert set(p["logvol"]) == set(maps)
            assert all(map(lambda v: v == v and abs(v) < 1e6, sum(p["logvol"].values(), [])))
            assert all(0 <= h <= 1 + 1e-12 for h in p["entropy"])
        assert set(geo["blocks"]) == {"layer1", "layer2", "layer3", "layer4"}
    planes = res["records"]["epoch_1"]["geometry"]["planes"]
    conv = next(v for k, v in planes.items() if k.startswith("convex"))
    assert conv["hull"] == "convex" and len(conv["logvol"][maps[0]]) == len(conv["a"]) > 0


def test_cifar_tiny_run_resume_and_recompute(tmp_path):
    from experiments import cifar

    out = str(tmp_path / "cifar")
    cifar.main(TINY + ["--out", out])
    res = _load(out)
    _check_common(res, out, ["euclidean"])
    cfg = res["config"]
    # epoch 0 is the network at initialisation (same seed -> same initial weights)
    torch.manual_seed(0)
    init = cifar_resnet(cfg["arch"], "gelu", 10, width=cfg["width"])
    ck0 = torch.load(os.path.join(out, "ckpt", "epoch_000000.pt"), weights_only=False)["model"]
    assert all(torch.equal(v, ck0[k]) for k, v in init.state_dict().items())
    ck1 = torch.load(os.path.join(out, "ckpt", "epoch_000001.pt"), weights_only=False)["model"]
    assert any(not torch.equal(v, ck1[k]) for k, v in ck0.items() if v.is_floating_point())
    # the recorded path logvol equals an independent dense float64 computation from the checkpoint
    model = cifar_resnet(cfg["arch"], "gelu", 10, width=cfg["width"])
    model.load_state_dict(ck1)
    model.eval()
    data = D.load_data(
        "unused", False, quick=True, standin=True, n_train=cfg["n_train"], n_test=cfg["n_test"], res=cfg["res"], seed=0
    )
    p = res["records"]["epoch_1"]["geometry"]["paths"][0]
    i, j = p["anchors"]
    x = D.normalize(data.test_x[[i, j]]).double()  # as the driver does
    pts = path(x[0], x[1], cfg["path_n"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fg.logvol(model.double(), pts, layer="avgpool", method="dense", normalize=True)
    got = torch.tensor(p["logvol"]["euclidean"], dtype=torch.float64)
    assert res["config"]["geometry"]["dtype"] == "float64"
    assert (got - ref).abs().max() < 1e-8 * ref.abs().max(), (got, ref)  # streamed (driver) vs dense
    # resume: a second run finds every snapshot recorded and trains nothing
    mtime = os.path.getmtime(os.path.join(out, "ckpt", "epoch_000001.pt"))
    cifar.main(TINY + ["--out", out])
    assert os.path.getmtime(os.path.join(out, "ckpt", "epoch_000001.pt")) == mtime
    assert _load(out)["records"] == res["records"]
    # Gaussian curvature on the planes beside logvol: recorded K equals the API on the checkpoint (K of the
    # normalised features = d_out K), boundary statistics and the figure are there
    assert os.path.getsize(os.path.join(out, "plane_curvature.png")) > 1000
    planes = res["records"]["epoch_1"]["geometry"]["planes"]
    e = next(v for k, v in planes.items() if k.startswith("affine"))
    K = e["curvature"]["euclidean"]
    assert len(K) == len(e["a"]) and sum(k is not None for k in K) >= len(K) - 1
    t = e["anchors"]
    X = D.normalize(data.test_x[t]).double()
    from fastgeom.slices import plane
    from fastgeom.surfaces import plane_directions

    pl = plane(X[0], X[1], X[2], n=e["n"], hull="affine", extent=e["extent"])
    u, v = plane_directions(X[0], X[1], X[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fg.gaussian_curvature(model.double(), pl.points[:3], u, v, layer="avgpool") * 32  # width 4: 32 features
    got = torch.tensor([float("nan") if k is None else k for k in K[:3]], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10, equal_nan=True)
    assert "curvature_boundary_ratio" in res["summary"] and "volume_boundary_ratio" in res["summary"]
    rho = e["curvature_logvol_spearman"]["euclidean"]
    assert rho is None or -1 <= rho <= 1


@pytest.mark.parametrize(
    "name,maps", [("barlow_twins", ["euclidean"]), ("simclr", ["euclidean", "sphere", "head_sphere"])]
)
def test_ssl_tiny_runs(tmp_path, name, maps):
    import importlib

    mod = importlib.import_module(f"experiments.{name}")
    out = str(tmp_path / name)
    mod.main(TINY + ["--out", out])
    res = _load(out)
    _check_common(res, out, maps)
    rec = res["records"]["epoch_1"]
    assert 0 <= rec["probe_test_acc"] <= 1 and 0 <= rec["probe_train_acc"] <= 1
    assert rec["train_losses"] and rec["train_losses"][0]["train_loss"] == rec["train_losses"][0]["train_loss"]
    if name == "simclr":  # the sphere pullback is a different quantity from the Euclidean one
        p = rec["geometry"]["paths"][0]["logvol"]
        assert max(abs(a - b) for a, b in zip(p["euclidean"], p["sphere"])) > 1e-3


def test_full_mode_without_cifar_says_how_to_get_it(tmp_path):
    from experiments import cifar

    with pytest.raises(FileNotFoundError, match="--download"):
        cifar.main(["--full", "--quiet", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")])


def test_standin_is_learnable_structure():
    x, y = D.procedural_gratings(200, seed=3)
    assert x.dtype == torch.uint8 and x.shape == (200, 3, 32, 32) and set(y.tolist()) == set(range(10))
    x2, y2 = D.procedural_gratings(200, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # anchors are distinct test images of the requested classes
    a = E.pick_anchors(y, E.GeoConfig())
    flat = [k for grp in a.values() for t in grp for k in t]
    assert len(set(flat)) == len(flat)
    assert [int(y[k]) for k in a["same"][1]] == [6, 6, 6]
