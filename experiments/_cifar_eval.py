"""Geometry of one snapshot of a CIFAR network: logvol along paths and on planes, per-block logvol,
spectra at the anchors, with predictions and normalised softmax entropy at every point.

Everything calls the library (``fastgeom.logvol``, ``fastgeom.spectrum``, ``fastgeom.slices``,
``fastgeom.gaussian_curvature``); nothing is re-derived here. ``logvol`` is in nats with ``normalize=True``
(features / sqrt(d_out), MATH.md 2.1); the figures convert to log10. On every plane, beside the log
volume, the Gaussian curvature K of the plane's image (of the same normalised features: d_out times K of
the raw ones) and ``boundary_ratio`` statistics: mean |K| (and mean volume element) on the plane's
decision-boundary cells (a grid neighbour is predicted differently) over the mean elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import fastgeom as fg
from fastgeom.slices import normalized_entropy, path, plane
from fastgeom.surfaces import plane_directions


@dataclass
class GeoMap:
    """A feature map to measure: ``fastgeom.logvol(model, x, layer, target=target)``."""

    name: str
    model: torch.nn.Module
    layer: str
    target: str = "euclidean"


@dataclass
class GeoConfig:
    path_n: int = 64  # points per interpolation (x1 excluded, MATH.md 8.1)
    plane_n: int = 80  # affine-hull planes: n x n grid on [-1, 1]^2
    convex_n: int = 80  # convex-hull (ternary) planes: n x n grid on [-extent, extent]^2, points inside kept
    convex_extent: float = 0.6  # covers the anchor triangle (|a| <= 0.5, -0.58 <= b <= 0.29)
    same_n: int = 80  # same-class affine planes
    block_n: int = 16  # points of the first path used for the per-block readouts
    block_pool: int = 512  # each block average-pooled to this many numbers
    blocks: tuple = ("layer1", "layer2", "layer3", "layer4")
    dtype: str = "float64"  # dtype of the network pass for geometry (factorisation is always float64)
    pairs: tuple = ((3, 5), (1, 9))  # cat-dog, automobile-truck
    triples: tuple = ((0, 1, 2),)
    same: tuple = ((0, 0, 0), (6, 6, 6))  # the paper's same-class planes


def pick_anchors(test_y: torch.Tensor, cfg: GeoConfig, seed: int = 0) -> dict:
    """Test-set indices for the pairs, triples and same-class triples (distinct images per class)."""
    g = torch.Generator().manual_seed(seed)
    pools = {
        c: (test_y == c).nonzero().flatten()[torch.randperm(int((test_y == c).sum()), generator=g)].tolist()
        for c in range(10)
    }
    used = {c: 0 for c in range(10)}

    def take(c):
        if used[c] >= len(pools[c]):
            raise ValueError(f"not enough test images of class {c} for the anchors; use a larger test subset")
        used[c] += 1
        return pools[c][used[c] - 1]

    return {
        "pairs": [[take(a), take(b)] for a, b in cfg.pairs],
        "triples": [[take(c) for c in t] for t in cfg.triples],
        "same": [[take(c) for c in t] for t in cfg.same],
    }


def _dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def _lv(m: GeoMap, x: torch.Tensor, cfg: GeoConfig, progress: bool, **kw) -> list:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fg.RankDeficiencyWarning)  # counted in results via ranks instead
        lv, diag = fg.logvol(
            m.model,
            x,
            layer=m.layer,
            target=m.target,
            normalize=True,
            dtype=_dtype(cfg.dtype),
            return_diagnostics=True,
            progress=progress,
            **kw,
        )
    return lv.tolist(), diag.rank.tolist(), int(diag.n_rounding.gt(0).sum())


@torch.no_grad()
def _pred(logits_fn, x: torch.Tensor, batch: int = 256):
    outs = [logits_fn(x[i : i + batch].float()).double() for i in range(0, len(x), batch)]  # nets are float32
    logits = torch.cat(outs)
    return logits.argmax(1).tolist(), normalized_entropy(logits).tolist()


def _gauss(m: GeoMap, pts: torch.Tensor, u, v, cfg: GeoConfig, progress: bool) -> list:
    """K (P,) of the plane x + a u + b v at pts for the normalised features of m (None where undefined)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fg.RankDeficiencyWarning)  # undefined points are recorded as None
        K = fg.gaussian_curvature(
            m.model, pts, u, v, layer=m.layer, target=m.target, dtype=_dtype(cfg.dtype), progress=progress
        )
    with torch.no_grad():
        d_out = fg.Geometry(m.model, m.layer, target=m.target, dtype=_dtype(cfg.dtype)).probe(pts[:1]).d_out
    return [v if v == v else None for v in (K * d_out).tolist()]


def plane_boundary_ratio(index, n: int, pred, values) -> float | None:
    """mean(values) on the plane's decision-boundary cells (a 4-neighbour on the n x n grid is predicted as
    another class) over mean(values) on the other cells; cells without a finite value are left out."""
    import math

    grid_pred = torch.full((n * n,), -1, dtype=torch.long)
    grid_val = torch.full((n * n,), float("nan"), dtype=torch.float64)
    grid_pred[torch.tensor(index)] = torch.tensor(pred)
    grid_val[torch.tensor(index)] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
    P, V = grid_pred.reshape(n, n), grid_val.reshape(n, n)
    edge = torch.zeros(n, n, dtype=torch.bool)
    for dim in (0, 1):
        a, b = P.narrow(dim, 0, n - 1), P.narrow(dim, 1, n - 1)
        diff = (a != b) & (a >= 0) & (b >= 0)
        edge.narrow(dim, 0, n - 1).logical_or_(diff)
        edge.narrow(dim, 1, n - 1).logical_or_(diff)
    ok = torch.isfinite(V) & (P >= 0)
    near, far = V[ok & edge], V[ok & ~edge]
    if near.numel() == 0 or far.numel() == 0 or float(far.mean()) == 0:
        return None
    return float(near.mean() / far.mean())


def abs_curvature_logvol_spearman(K: list, logvol: list) -> float | None:
    """Spearman rank correlation of |K| and logvol over the points where both are finite (None if < 3)."""
    import math

    from scipy.stats import spearmanr

    pairs = [(abs(k), lv) for k, lv in zip(K, logvol) if k is not None and math.isfinite(k) and math.isfinite(lv)]
    if len(pairs) < 3:
        return None
    r = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).correlation
    return None if r != r else float(r)


def snapshot(
    maps: list[GeoMap],
    logits_fn: Callable,
    images: torch.Tensor,
    anchors: dict,
    cfg: GeoConfig,
    planes: bool,
    progress: bool = True,
    log=print,
) -> dict:
    """All geometry of one snapshot. ``images``: normalised test images (N, 3, H, W); ``logits_fn``:
    x -> (B, 10) logits (classifier or probe on the backbone). ``maps[0]`` is the primary feature map;
    paths and the affine planes are measured for every map, the other planes for ``maps[0]`` only."""
    dt = _dtype(cfg.dtype)
    X = images.to(dt)
    rec: dict = {"paths": [], "planes": {}, "blocks": {}, "spectra": {}}
    # 1-D interpolations
    for i, j in anchors["pairs"]:
        pts = path(X[i], X[j], cfg.path_n)
        pred, ent = _pred(logits_fn, pts)
        entry = {
            "anchors": [i, j],
            "t": (torch.arange(cfg.path_n) / cfg.path_n).tolist(),
            "pred": pred,
            "entropy": ent,
            "logvol": {},
            "rank": {},
            "n_rounding": {},
        }
        for m in maps:
            entry["logvol"][m.name], entry["rank"][m.name], entry["n_rounding"][m.name] = _lv(m, pts, cfg, progress)
        rec["paths"].append(entry)
    # per block (primary map's model), on block_n points of the first path
    i, j = anchors["pairs"][0]
    pts = path(X[i], X[j], cfg.block_n)
    for b in cfg.blocks:
        lv, rank, nr = _lv(GeoMap(b, maps[0].model, b), pts, cfg, progress, pool=cfg.block_pool)
        rec["blocks"][b] = {"t": (torch.arange(cfg.block_n) / cfg.block_n).tolist(), "logvol": lv, "rank": rank}
    # spectra at the anchors of the first triple and of the pairs
    idx = sorted({k for t in anchors["triples"] for k in t} | {k for p in anchors["pairs"] for k in p})
    m0 = maps[0]
    s = fg.spectrum(m0.model, X[idx], layer=m0.layer, target=m0.target, normalize=True, dtype=dt, progress=False)
    rec["spectra"] = {str(k): s[n].tolist() for n, k in enumerate(idx)}
    if planes:
        jobs = [
            (f"convex_{'-'.join(map(str, t))}", t, "convex", cfg.convex_n, cfg.convex_extent, maps[:1])
            for t in anchors["triples"]
        ]
        jobs += [(f"affine_{'-'.join(map(str, t))}", t, "affine", cfg.plane_n, 1.0, maps) for t in anchors["triples"]]
        jobs += [(f"same_{'-'.join(map(str, t))}", t, "affine", cfg.same_n, 1.0, maps[:1]) for t in anchors["same"]]
        for name, t, hull, n, ext, ms in jobs:
            pl = plane(X[t[0]], X[t[1]], X[t[2]], n=n, hull=hull, extent=ext)
            pred, ent = _pred(logits_fn, pl.points)
            entry = {
                "anchors": list(t),
                "hull": hull,
                "n": n,
                "extent": ext,
                "index": pl.index.tolist(),
                "a": pl.a.tolist(),
                "b": pl.b.tolist(),
                "pred": pred,
                "entropy": ent,
                "logvol": {},
                "rank": {},
                "curvature": {},
                "curvature_boundary_ratio": {},
                "volume_boundary_ratio": {},
                "curvature_logvol_spearman": {},
            }
            log(f"[geometry] plane {name}: {len(pl.points)} points x {len(ms)} map(s)")
            u, v = plane_directions(X[t[0]], X[t[1]], X[t[2]])
            for m in ms:
                entry["logvol"][m.name], entry["rank"][m.name], _ = _lv(m, pl.points, cfg, progress)
                K = _gauss(m, pl.points, u.to(dt), v.to(dt), cfg, progress)
                entry["curvature"][m.name] = K
                idx = entry["index"]
                entry["curvature_boundary_ratio"][m.name] = plane_boundary_ratio(
                    idx, n, pred, [None if k is None else abs(k) for k in K]
                )
                lv = torch.tensor(entry["logvol"][m.name], dtype=torch.float64)
                vol = (lv - lv[torch.isfinite(lv)].max()).exp() if bool(torch.isfinite(lv).any()) else lv
                entry["volume_boundary_ratio"][m.name] = plane_boundary_ratio(idx, n, pred, vol.tolist())
                entry["curvature_logvol_spearman"][m.name] = abs_curvature_logvol_spearman(K, entry["logvol"][m.name])
            rec["planes"][name] = entry
    return rec


# ------------------------------------------------------------------------------------------------
# Sizes of the three configurations shared by the drivers
# ------------------------------------------------------------------------------------------------
SIZES = {
    # the paper: ResNet-34 on 32x32 CIFAR-10, 64-step paths, 80x80 planes, blocks pooled to 512
    "full": dict(
        arch="resnet34",
        width=64,
        res=32,
        n_train=None,
        n_test=None,
        path_n=64,
        plane_n=80,
        convex_n=80,
        same_n=80,
        block_n=16,
        block_pool=512,
        geo_dtype="float64",
        workers=8,
    ),
    # CPU minutes: narrow ResNet-18 (width 8, 64 features) on 16x16 images
    "quick": dict(
        arch="resnet18",
        width=8,
        res=16,
        n_train=2000,
        n_test=400,
        path_n=16,
        plane_n=10,
        convex_n=14,
        same_n=8,
        block_n=8,
        block_pool=64,
        geo_dtype="float32",
        workers=0,
    ),
    # CI smoke test: width 4 (32 features), 8x8 images, a handful of points
    "tiny": dict(
        arch="resnet18",
        width=4,
        res=8,
        n_train=96,
        n_test=100,
        path_n=4,
        plane_n=3,
        convex_n=4,
        same_n=2,
        block_n=2,
        block_pool=32,
        geo_dtype="float64",
        workers=0,
        pairs=((3, 5),),
        same=((6, 6, 6),),
    ),
}


def add_size_args(p) -> None:
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration (seconds; implies quick)")
    p.add_argument("--standin", action="store_true", help="use the procedural stand-in even if CIFAR-10 is present")
    p.add_argument("--epochs", type=int, default=None, help="override the number of training epochs")
    p.add_argument("--snapshots", type=str, default=None, help="comma-separated snapshot epochs (0 = init)")
    p.add_argument("--plane-epochs", type=str, default=None, help="comma-separated epochs with planes (default: last)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is much faster on a shared, oversubscribed machine)",
    )
    p.add_argument(
        "--geo-dtype",
        choices=["float32", "float64"],
        default=None,
        help="network dtype for the Jacobians (factorisation is always float64)",
    )


def size_of(args) -> str:
    return "full" if args.full else ("tiny" if args.tiny else "quick")


def ints(s: str | None, default: list[int]) -> list[int]:
    return default if s is None else [int(v) for v in s.split(",") if v.strip()]


def schedule(args, size: str, full_epochs: int, full_snaps: list[int], full_plane_epochs: list[int]):
    """(epochs, snapshot epochs, plane epochs) for a run of `size` ("full" | "quick" | "tiny"); quick
    runs train 8 epochs with snapshots 0, 2, 8 and tiny runs 1 epoch; --epochs/--snapshots/--plane-epochs override."""
    epochs = args.epochs if args.epochs is not None else {"full": full_epochs, "quick": 8, "tiny": 1}[size]
    snaps = ints(args.snapshots, {"full": full_snaps, "quick": [0, 2, epochs], "tiny": [0, epochs]}[size])
    snaps = sorted({s for s in snaps if s <= epochs} | {0, epochs})
    plane_eps = ints(args.plane_epochs, {"full": full_plane_epochs + [epochs]}.get(size, [epochs]))
    return epochs, snaps, plane_eps


def geo_config(sz: dict, args) -> GeoConfig:
    extra = {k: sz[k] for k in ("pairs", "triples", "same") if k in sz}
    return GeoConfig(
        **extra,
        path_n=sz["path_n"],
        plane_n=sz["plane_n"],
        convex_n=sz["convex_n"],
        same_n=sz["same_n"],
        block_n=sz["block_n"],
        block_pool=sz["block_pool"],
        dtype=args.geo_dtype or _default_dtype(sz, args),
    )


def _default_dtype(sz: dict, args) -> str:
    """float64 for ReLU nets (dead units make pooled Jacobians numerically rank-deficient, unresolvable in
    float32) and in full/tiny runs; quick GELU runs use a float32 network pass (float64 factorisation)."""
    return "float64" if getattr(args, "activation", "gelu") == "relu" else sz["geo_dtype"]


class threads:
    """Context manager: torch.set_num_threads(n) inside (n None: unchanged), restored afterwards."""

    def __init__(self, n: int | None):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
