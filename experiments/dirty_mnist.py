"""Dirty-MNIST (paper section 4): histograms of the hidden-layer log volume element of the trained
MNIST net at clean MNIST test digits against ambiguous Dirty-MNIST digits (digits 0, 7, 9 and all).

    python -m experiments.dirty_mnist --full --data-root data [--download] --out runs/dirty_mnist-full
    python -m experiments.dirty_mnist --quick --out runs/dirty_mnist-quick
    python -m experiments.dirty_mnist --tiny  --out /tmp/dirty_mnist-tiny     # CI smoke run
    python -m experiments.dirty_mnist --full --mnist-out runs/mnist-full ...  # reuse that trained net

full: clean = MNIST test digits (torchvision), ambiguous = AmbiguousMNIST test digits from the
``ddu_dirty_mnist`` package (pip install ddu_dirty_mnist; a clear error says so when missing).
quick/tiny: clean = stand-in test digits (sklearn 8x8 digits upsampled), ambiguous = blends of two
stand-in test digits of different classes (labelled by the first class). Both named in titles and
results.json.

The net is the mnist driver's (same configuration, ``experiments.mnist.config``): loaded from
``--mnist-out``'s final checkpoint when given, else trained here with the same checkpoints/resume.
log vol: ``fastgeom.logvol(model, x, layer="act", normalize=True)``. results.json reports per
group the mean / median log10 vol, and the AUROC of log vol for telling ambiguous from clean.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

from experiments import mnist as mn
from experiments.common import Run, parser

import fastgeom as fg
from fastgeom import data

LN10 = math.log(10)
CLASSES = (0, 7, 9)


def main(argv=None) -> dict:
    p = mn.add_args(parser("dirty_mnist", __doc__))
    p.add_argument("--mnist-out", default=None, help="output folder of an mnist run whose final checkpoint to use")
    p.add_argument("--per-group", type=int, default=None, help="points per histogram group (default by mode)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = mn.config(args)
    per = args.per_group or (40 if args.tiny else 1000 if args.full else 300)
    cfg.update({"per_group": per, "classes": list(CLASSES), "mnist_out": args.mnist_out,
                "ambiguous": "AmbiguousMNIST (ddu_dirty_mnist), test split" if args.full else data.BLEND_STANDIN})
    run = Run("dirty_mnist", args, cfg)
    xtr, ytr, xte, yte = mn.load_data(args, cfg)
    if args.full:
        xam, yam = data.ambiguous_mnist(args.data_root, download=args.download)
    else:
        xam, yam, _ = data.blend_ambiguous(xte, yte, per * 2, seed=cfg["seed"])
    model, opt = mn.build(cfg)
    final = cfg["epochs"]
    if args.mnist_out:
        path = Run.ckpt_path(argparse.Namespace(out=args.mnist_out), final)  # that run's checkpoint naming
        if not os.path.exists(path):
            raise FileNotFoundError(f"--mnist-out {args.mnist_out!r} has no checkpoint for epoch {final} ({path}); "
                                    "run `python -m experiments.mnist` with the same mode first, or omit --mnist-out")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    else:
        for _ in mn.train_loop(run, model, opt, xtr, ytr, cfg, [final]):
            pass
    g = torch.Generator().manual_seed(cfg["seed"])

    def pick(x, y, c, k):
        idx = (y == c).nonzero().flatten() if c is not None else torch.arange(x.shape[0])
        return x[idx[torch.randperm(idx.numel(), generator=g)[:k]]]

    groups = {}
    for c in list(CLASSES) + [None]:
        name = "all" if c is None else str(c)
        key = f"class_{name}"
        if not run.has(key):
            k = per if c is None else max(per // 4, 8)
            clean = mn.geometry(model, pick(xte, yte, c, k)) / LN10
            amb = mn.geometry(model, pick(xam, yam, c, k)) / LN10
            run.record(key, {"clean_log10vol": clean.tolist(), "ambiguous_log10vol": amb.tolist(),
                             "clean_mean": float(clean.mean()), "ambiguous_mean": float(amb.mean()),
                             "clean_median": float(clean.median()), "ambiguous_median": float(amb.median()),
                             "auroc_ambiguous_vs_clean": auroc(clean, amb)})
        groups[name] = run.results["records"][key]
    import matplotlib.pyplot as plt
    names = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), constrained_layout=True)
    tag = "MNIST / AmbiguousMNIST" if args.full else "stand-in: digits / blends"
    for ax, name in zip(axes, names):
        r = groups[name]
        fg.plot.histograms({"clean": r["clean_log10vol"], "ambiguous": r["ambiguous_log10vol"]}, ax, bins=25,
                           title=f"digit {name}: AUROC {r['auroc_ambiguous_vs_clean']:.2f}")
    fig.suptitle(f"log10 volume element of the trained MNIST net's hidden layer at clean vs ambiguous digits ({tag})",
                 fontsize=9)
    run.savefig(fig, "histograms")
    run.summary(**{f"auroc_{n}": groups[n]["auroc_ambiguous_vs_clean"] for n in names},
                mean_log10vol={n: {"clean": groups[n]["clean_mean"], "ambiguous": groups[n]["ambiguous_mean"]}
                               for n in names}, clean=cfg["data"], ambiguous=cfg["ambiguous"])
    print(f"wrote {run.out}/results.json; AUROC (ambiguous > clean log vol), all digits: "
          f"{groups['all']['auroc_ambiguous_vs_clean']:.3f}", file=sys.stderr)
    return run.results


def auroc(clean: torch.Tensor, amb: torch.Tensor) -> float:
    """Area under the ROC curve for scoring ambiguous (positive) above clean by log vol."""
    from sklearn.metrics import roc_auc_score
    y = np.r_[np.zeros(clean.numel()), np.ones(amb.numel())]
    return float(roc_auc_score(y, np.r_[clean.numpy(), amb.numpy()]))


if __name__ == "__main__":
    main()
