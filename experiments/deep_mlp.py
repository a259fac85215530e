"""Deep 2-D MLP on the sinusoid task (MATH.md 7.2, paper Appendix I): volume element of each hidden
layer's feature map (widths 8-8-8, sigmoid) over training, with the decision boundary.

    python -m experiments.deep_mlp --quick --out runs/deep_mlp-quick   # 2000 epochs, 40x40 grid
    python -m experiments.deep_mlp --full  --out runs/deep_mlp-full    # 10000 epochs, 80x80 grid
    python -m experiments.deep_mlp --tiny  --out /tmp/deep_mlp-tiny    # CI smoke run

Model: [2, 8, 8, 8, 2] with h_l = sigmoid((W_l h_{l-1} + b_l)/sqrt(n_{l-1})) after the first layer
(``fastgeom.train.DeepMLP``), N(0, 1) init, full-batch SGD lr 0.1, momentum 0.9, float64. Layer
l's metric is that of h_l/sqrt(n_l): ``fastgeom.logvol(model, grid, layer=f"acts.{l}",
normalize=True, method="dense")`` (exact engine, float64). results.json also has each layer's
``boundary_ratio`` (as the sinusoid driver).

Beyond the paper (which shows only volume for deep nets): each layer's Ricci scalar R of the same
metric (``fastgeom.scalar_curvature``, Gauss's equation; every hidden layer is an immersion, 8 >= 2,
and for 2-D inputs R = 2K; scaled by n_l because the features are h_l/sqrt(n_l)) on the grid, its map
over training (figure ``curvature_layers``), and ``curvature_boundary_ratio``: mean |R| within 0.15 of
the true boundary over the mean elsewhere (points where R is undefined, NaN, left out).
"""

from __future__ import annotations

import math
import sys

import torch

import fastgeom as fg
from experiments.common import parser, seed_everything
from experiments.xor import TaggedRun, add_common
from fastgeom import data, slices
from fastgeom.sinusoid import boundary_ratio
from fastgeom.surfaces import scalar_curvature
from fastgeom.train import DeepMLP, full_batch_epoch, logits

LN10 = math.log(10)


def curvature_boundary_ratio(grid: torch.Tensor, R: torch.Tensor) -> float:
    """boundary_ratio of |R| over the points where R is defined (NaN where it is not measurable)."""
    ok = torch.isfinite(R)
    return boundary_ratio(grid[ok], R[ok].abs()) if bool(ok.any()) else float("nan")


def config(args) -> dict:
    if args.tiny:
        cfg = {"epochs": 100, "snapshots": [0, 100], "n_grid": 20}
    elif args.full:
        cfg = {"epochs": 10000, "snapshots": [0, 100, 1000, 5000, 10000], "n_grid": 80}
    else:
        cfg = {"epochs": 2000, "snapshots": [0, 200, 1000, 2000], "n_grid": 40}
    if args.epochs:
        cfg["snapshots"] = sorted({s for s in cfg["snapshots"] if s < args.epochs} | {args.epochs})
        cfg["epochs"] = args.epochs
    cfg.update(
        {
            "task": "sinusoid, deep MLP",
            "widths": [2] + (args.widths or [8, 8, 8]) + [2],
            "activation": "sigmoid",
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "n_train": 400,
            "grid": f"{cfg['n_grid']}x{cfg['n_grid']} over [-1, 1]^2",
            "seed": args.seed,
            "tiny": args.tiny,
        }
    )
    return cfg


def main(argv=None) -> dict:
    args = add_common(parser("deep_mlp", __doc__)).parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config(args)
    run = TaggedRun("deep_mlp", args, cfg)
    x, y = data.sinusoid_data(cfg["n_train"], seed=args.seed)
    grid, axis = slices.grid_2d(-1.0, 1.0, cfg["n_grid"])
    seed_everything(cfg["seed"])
    model = DeepMLP(cfg["widths"], cfg["activation"]).double()
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    layers = model.hidden_layers()
    recs = {}
    for ep in run.snapshot_loop(
        model, opt, cfg["snapshots"], lambda e: full_batch_epoch(model, opt, x, y), desc="deep_mlp"
    ):
        key = f"epoch_{ep}"
        if not run.has(key) or "ricci" not in run.results["records"][key].get(layers[0], {}):  # older runs: no R
            lg = logits(model, grid)
            rec = {
                "epoch": ep,
                "train_accuracy": float((logits(model, x).argmax(1) == y).double().mean()),
                "margin": (lg[:, 1] - lg[:, 0]).tolist(),
            }
            for i, layer in enumerate(layers):
                lv = fg.logvol(model, grid, layer=layer, normalize=True, method="dense", progress=False)
                R = scalar_curvature(model, grid, layer, progress=False) * cfg["widths"][i + 1]  # of h_l/sqrt(n_l)
                rec[layer] = {
                    "log10vol": (lv / LN10).tolist(),
                    "boundary_ratio": boundary_ratio(grid, lv.exp()),
                    "ricci": [v if math.isfinite(v) else None for v in R.tolist()],
                    "curvature_boundary_ratio": curvature_boundary_ratio(grid, R),
                }
            run.record(key, rec)
        recs[ep] = run.results["records"][key]
    epochs = sorted(recs)
    panels = [
        [
            {
                "values": recs[e][layer]["log10vol"],
                "margin": recs[e]["margin"],
                "true_boundary": data.sinusoid_boundary,
                "title": (f"epoch {e} (acc {recs[e]['train_accuracy']:.2f})" if i == 0 else None),
            }
            for e in epochs
        ]
        for i, layer in enumerate(layers)
    ]
    fig = fg.plot.heatmap_grid(
        panels,
        axis,
        row_labels=[f"layer {i + 1}: " + r"$\log_{10}$ vol" for i in range(len(layers))],
        suptitle=f"deep MLP {cfg['widths']} on the sinusoid task ({run.mode} mode)",
    )
    run.savefig(fig, "heatmaps_layers")
    nan = float("nan")
    panels = [
        [
            {
                "values": [nan if v is None else v for v in recs[e][layer]["ricci"]],
                "margin": recs[e]["margin"],
                "true_boundary": data.sinusoid_boundary,
                "symmetric": True,
                "title": (f"epoch {e} (acc {recs[e]['train_accuracy']:.2f})" if i == 0 else None),
            }
            for e in epochs
        ]
        for i, layer in enumerate(layers)
    ]
    fig = fg.plot.heatmap_grid(
        panels,
        axis,
        row_labels=[f"layer {i + 1}: Ricci scalar R" for i in range(len(layers))],
        suptitle=f"deep MLP {cfg['widths']}: scalar curvature per layer ({run.mode} mode; "
        r"colour $\pm$95th percentile of |R|)",
    )
    run.savefig(fig, "curvature_layers")
    run.summary(
        boundary_ratio={layer: {str(e): recs[e][layer]["boundary_ratio"] for e in epochs} for layer in layers},
        curvature_boundary_ratio={
            layer: {str(e): recs[e][layer]["curvature_boundary_ratio"] for e in epochs} for layer in layers
        },
        final_accuracy=recs[epochs[-1]]["train_accuracy"],
    )
    print(f"wrote {run.out}/results.json", file=sys.stderr)
    return run.results


if __name__ == "__main__":
    main()
