"""MNIST (paper section 4, Figs. on MNIST; Appendix I): a shallow sigmoid net 784 -> n -> 10, and the
geometry of its hidden layer over training.

    python -m experiments.mnist --full --data-root data [--download] --out runs/mnist-full   # real MNIST
    python -m experiments.mnist --quick --out runs/mnist-quick    # offline stand-in, minutes on CPU
    python -m experiments.mnist --tiny  --out /tmp/mnist-tiny     # CI smoke run

full: MNIST through torchvision (train split for training, test digits for the slices), n = 2000,
Adam lr 1e-3, weight decay 1e-4, batch 1000, 200 epochs, float64; paths of 64 steps between test
digits 1-5, 1-6, 5-7; planes 5-6-1, 5-6-7, 7-6-1 on a 60x60 grid (convex hull = ternary, and the
affine patch). quick/tiny: the stand-in "sklearn 8x8 digits upsampled to 28x28" (75/25
split), n = 256 / 64, fewer epochs and smaller planes; named in titles and results.json.

Geometry: Phi(x) = sigmoid(W1 x + b1)/sqrt(n), ``fastgeom.logvol(model, x, layer="act",
normalize=True)`` (the full volume element of the 784-d input, MATH 2.2-2.3, all singular values;
for n < 784 the pseudo-volume) and ``fastgeom.spectrum`` (metric eigenvalues = squared singular
values) at the anchors. Softmax entropy is normalised (``fastgeom.slices.normalized_entropy``).

results.json, per snapshot: test accuracy; per path t, log10 vol, entropy, predicted class;
``entropy_logvol_pearson`` (Pearson correlation of log vol and entropy over all path points);
spectra at the anchors; plane values. Epoch 0 = initialisation.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from experiments.common import Run, parser, seed_everything

import fastgeom as fg
from fastgeom import data, slices
from fastgeom.train import MLPClassifier, accuracy, logits, minibatch_epoch

LN10 = math.log(10)
PAIRS = [(1, 5), (1, 6), (5, 7)]
TRIPLES = [(5, 6, 1), (5, 6, 7), (7, 6, 1)]


def add_args(p):
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration (used by the tests)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: by mode)")
    p.add_argument("--width", type=int, default=None, help="hidden width (default: 2000 full, 256 quick)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def config(args) -> dict:
    if args.tiny:
        cfg = {"width": 64, "epochs": 25, "snapshots": [0, 25], "plane_snapshots": [25], "path_steps": 24,
               "plane_grid": 12, "triples": TRIPLES[:1], "pairs": PAIRS}
    elif args.full:
        cfg = {"width": 2000, "epochs": 200, "snapshots": [0, 1, 5, 20, 50, 100, 200],
               "plane_snapshots": [0, 20, 200], "path_steps": 64, "plane_grid": 60, "triples": TRIPLES, "pairs": PAIRS}
    else:
        cfg = {"width": 256, "epochs": 60, "snapshots": [0, 5, 20, 60], "plane_snapshots": [0, 60],
               "path_steps": 64, "plane_grid": 24, "triples": TRIPLES[:2], "pairs": PAIRS}
    if args.width:
        cfg["width"] = args.width
    if args.epochs:
        cfg["snapshots"] = sorted({s for s in cfg["snapshots"] if s < args.epochs} | {args.epochs})
        cfg["plane_snapshots"] = sorted({s for s in cfg["plane_snapshots"] if s < args.epochs} | {args.epochs})
        cfg["epochs"] = args.epochs
    cfg.update({"data": "MNIST (torchvision)" if args.full else data.DIGITS_STANDIN, "activation": "sigmoid",
                "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 1000, "dtype": "float64",
                "seed": args.seed, "tiny": getattr(args, "tiny", False)})
    return cfg


def load_data(args, cfg):
    """(x_train, y_train, x_test, y_test), float64 (N, 784) in [0, 1]."""
    if args.full:
        xtr, ytr = data.mnist(args.data_root, train=True, download=args.download)
        xte, yte = data.mnist(args.data_root, train=False, download=args.download)
        return xtr, ytr, xte, yte
    x, y = data.digits_standin()
    return data.split(x, y, 0.75, seed=cfg["seed"])


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


def geometry(model, x: torch.Tensor, budget_bytes: float = 2.5e8, progress: bool = False, desc: str = "logvol") -> torch.Tensor:
    """Natural-log volume element of the hidden layer (normalised by sqrt(n)) at x (N, 784), in chunks
    whose dense float64 Jacobians fit ``budget_bytes``."""
    chunk = max(4, int(budget_bytes // (model.lin1.out_features * x[0].numel() * 8)))
    from tqdm.auto import tqdm
    starts = range(0, x.shape[0], chunk)
    return torch.cat([fg.logvol(model, x[i:i + chunk], layer="act", normalize=True, method="dense", progress=False)
                      for i in tqdm(starts, desc=desc, leave=False, disable=not progress or len(starts) < 2)])


def evaluate_paths(model, anchors: dict, cfg) -> dict:
    out = {}
    for a, b in cfg["pairs"]:
        pts = slices.path(anchors[a], anchors[b], cfg["path_steps"])
        lv = geometry(model, pts)
        lg = logits(model, pts)
        out[f"{a}-{b}"] = {"t": (torch.arange(cfg["path_steps"]) / cfg["path_steps"]).tolist(),
                           "log10vol": (lv / LN10).tolist(), "entropy": slices.normalized_entropy(lg).tolist(),
                           "classes": lg.argmax(1).tolist()}
    return out


def evaluate_planes(model, anchors: dict, cfg, progress: bool = False) -> dict:
    out = {}
    for tri in cfg["triples"]:
        for hull in ("convex", "affine"):
            pl = slices.plane(*(anchors[k] for k in tri), n=cfg["plane_grid"], hull=hull)
            lv = geometry(model, pl.points, progress=progress, desc=f"plane {'-'.join(map(str, tri))} {hull}")
            lg = logits(model, pl.points)
            out[f"{'-'.join(map(str, tri))}/{hull}"] = {
                "log10vol": (lv / LN10).tolist(), "entropy": slices.normalized_entropy(lg).tolist(),
                "classes": lg.argmax(1).tolist(), "inside": pl.inside.tolist()}
    return out


def pearson(paths: dict) -> float:
    lv = np.concatenate([p["log10vol"] for p in paths.values()])
    h = np.concatenate([p["entropy"] for p in paths.values()])
    if lv.std() == 0 or h.std() == 0:
        return float("nan")
    return float(np.corrcoef(lv, h)[0, 1])


def train_loop(run: Run, model, opt, xtr, ytr, cfg, snapshots):
    """Yield snapshot epochs (model in that state), training with minibatches in between (resumable)."""
    return run.snapshot_loop(model, opt, snapshots,
                             lambda e: minibatch_epoch(model, opt, xtr, ytr, cfg["batch_size"]), desc="mnist")


def main(argv=None) -> dict:
    args = add_args(parser("mnist", __doc__)).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config(args)
    run = Run("mnist", args, cfg)
    xtr, ytr, xte, yte = load_data(args, cfg)
    digits = sorted({d for p in cfg["pairs"] for d in p} | {d for t in cfg["triples"] for d in t})
    anchors = {d: anchor(xte, yte, d) for d in digits}
    model, opt = build(cfg)
    recs = {}
    for ep in train_loop(run, model, opt, xtr, ytr, cfg, cfg["snapshots"]):
        key = f"epoch_{ep}"
        if not run.has(key):
            paths = evaluate_paths(model, anchors, cfg)
            A = torch.stack([anchors[d] for d in digits])
            s = fg.spectrum(model, A, layer="act", normalize=True, method="dense", progress=False)
            rec = {"epoch": ep, "test_accuracy": accuracy(model, xte, yte), "train_accuracy": accuracy(model, xtr, ytr),
                   "paths": paths, "entropy_logvol_pearson": pearson(paths),
                   "metric_eigenvalues": {str(d): (s[i] ** 2).tolist() for i, d in enumerate(digits)}}
            if ep in cfg["plane_snapshots"]:
                rec["planes"] = evaluate_planes(model, anchors, cfg, run.progress)
            run.record(key, rec)
        recs[ep] = run.results["records"][key]
    figures(run, cfg, recs, anchors)
    eps = sorted(recs)
    run.summary(entropy_logvol_pearson={str(e): recs[e]["entropy_logvol_pearson"] for e in eps},
                test_accuracy={str(e): recs[e]["test_accuracy"] for e in eps}, data=cfg["data"])
    print(f"wrote {run.out}/results.json; Pearson(logvol, entropy) along paths by epoch: "
          + ", ".join(f"{e}: {recs[e]['entropy_logvol_pearson']:.2f}" for e in eps), file=sys.stderr)
    return run.results


def figures(run: Run, cfg: dict, recs: dict, anchors: dict) -> None:
    tag = "MNIST" if run.mode == "full" else "stand-in: " + cfg["data"]
    eps = sorted(recs)
    paths = {name: {e: {"t": recs[e]["paths"][name]["t"], "values": recs[e]["paths"][name]["log10vol"],
                        "classes": recs[e]["paths"][name]["classes"], "entropy": recs[e]["paths"][name]["entropy"]}
                    for e in eps} for name in recs[eps[0]]["paths"]}
    fig = fg.plot.paths_over_epochs(paths, suptitle=f"log10 volume element along interpolations (colour = predicted "
                                                     f"class, dotted = entropy); {tag}")
    run.savefig(fig, "paths")
    for tri in cfg["triples"]:
        name = "-".join(map(str, tri))
        rows = {}
        for e in cfg["plane_snapshots"]:
            if e not in recs or "planes" not in recs[e]:
                continue
            for hull in ("convex", "affine"):
                pl = slices.plane(*(anchors[k] for k in tri), n=cfg["plane_grid"], hull=hull)
                d = recs[e]["planes"][f"{name}/{hull}"]
                rows[f"epoch {e}, {hull}"] = {"plane": pl, "classes": d["classes"], "entropy": d["entropy"],
                                              "values": d["log10vol"]}
        fig = fg.plot.plane_triptych(rows, anchor_names=[str(k) for k in tri], share_values=False,
                                     suptitle=f"plane through test digits {name} ({tag})")
        run.savefig(fig, f"plane_{name}")
    digits = sorted(anchors)
    spec = {e: torch.tensor([recs[e]["metric_eigenvalues"][str(d)] for d in digits[:3]]) for e in eps}
    fig = fg.plot.spectra_over_epochs(spec, labels=[str(d) for d in digits[:3]],
                                      title=f"metric eigenvalues at the anchors by epoch ({tag})")
    run.savefig(fig, "spectra")


if __name__ == "__main__":
    main()
