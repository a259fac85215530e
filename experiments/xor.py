"""XOR task (MATH.md 7.1, paper Appendix I.1): volume element and Ricci scalar of the first layer of
2 -> n -> 2 sigmoid nets on the 40x40 grid over [-1.5, 1.5]^2, over training, with the decision
boundary overlaid.

    python -m experiments.xor --quick --out runs/xor-quick     # widths 2, 20;  2000 epochs
    python -m experiments.xor --full  --out runs/xor-full      # widths 2, 250; 2000 epochs, more snapshots
    python -m experiments.xor --tiny  --out /tmp/xor-tiny      # CI smoke run (seconds)
    (add --gif for an animated GIF of the volume element over the snapshots)

Training: full batch SGD lr 0.02, momentum 0.9, weight decay 1e-4, cross-entropy, float64, all
weights and biases N(0, 1). Geometry: Phi(x) = sigmoid(W1 x + b1)/sqrt(n) through
``fastgeom.shallow.geometry`` (closed forms, true curvature convention; the original code's values
are 3x, MATH 3.4). Width 2 has n = d, so R = 0 identically (MATH 3.5). Epoch 0 = initialisation.

This module also holds the machinery the sinusoid driver reuses (``run_toy``).
"""

from __future__ import annotations

import math
import os
import sys

import torch

import fastgeom as fg
from experiments.common import Run, parser, seed_everything
from fastgeom import data, slices
from fastgeom.train import ShallowNet, full_batch_epoch, logits

LN10 = math.log(10)


class TaggedRun(Run):
    """A Run whose checkpoints carry a tag (one training run per width in one output folder)."""

    tag = ""

    def ckpt_path(self, epoch: int) -> str:
        return os.path.join(self.out, "ckpt", f"{self.tag}epoch_{epoch:06d}.pt")


def add_common(p):
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration (a few seconds; used by the tests)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="hidden widths (default: by mode)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: by mode)")
    p.add_argument("--gif", action="store_true", help="also write an animated GIF of log10 vol over the snapshots")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these nets are tiny and extra threads only contend)",
    )
    return p


def toy_geometry(model: ShallowNet, grid: torch.Tensor) -> dict:
    """First-layer log10 vol and Ricci scalar, and the logit margin, on grid points (N, 2)."""
    geo = fg.shallow.geometry(model.W, model.b, grid, model.activation)
    lg = logits(model, grid)
    return {"log10vol": geo["logvol"] / LN10, "ricci": geo["ricci"], "margin": lg[:, 1] - lg[:, 0]}


def make_optimizer(model, cfg: dict) -> torch.optim.Optimizer:
    """SGD (lr, momentum, weight_decay) or Adam (lr, weight_decay) from cfg["optimizer"]."""
    if cfg.get("optimizer", "sgd") == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def save_gif(run: Run, name: str, recs: dict, axis, true_boundary=None, ms_per_frame: int = 700) -> str:
    """Animated GIF (PIL) of the log10 vol heat map over the snapshots ``recs`` {epoch: record}."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    vals = [v for r in recs.values() for v in r["log10vol"]]
    lo, hi = min(vals), max(vals)
    frames = []
    for ep in sorted(recs):
        fig, ax = plt.subplots(figsize=(4.2, 3.6), constrained_layout=True)
        fg.plot.heatmap(
            recs[ep]["log10vol"],
            axis,
            ax,
            margin=recs[ep]["margin"],
            true_boundary=true_boundary,
            vmin=lo,
            vmax=hi,
            title=f"{name}: epoch {ep}",
            colorbar=r"$\log_{10}$ vol",
        )
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        frames.append(Image.open(io.BytesIO(buf.getvalue())).convert("P", palette=Image.Palette.ADAPTIVE))
    path = os.path.join(run.out, f"{name}.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path


def run_toy(
    name: str,
    run: TaggedRun,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: dict,
    grid,
    axis,
    extra_metrics=None,
    true_boundary=None,
    gif: bool = False,
) -> dict:
    """Train a 2 -> n -> 2 net per width in cfg["widths"], evaluating the geometry at each snapshot
    (resumable); draws one heat-map figure per width. ``extra_metrics(geometry, grid) -> dict`` adds
    per-snapshot numbers (e.g. boundary_ratio). Returns {width: {epoch: record}}."""
    out = {}
    for n in cfg["widths"]:
        seed_everything(cfg["seed"] + n)
        model = ShallowNet(2, n, 2, cfg["activation"]).double()
        opt = make_optimizer(model, cfg)
        run.tag = f"n{n}_"
        recs = {}
        for ep in run.snapshot_loop(
            model,
            opt,
            cfg["snapshots"],
            lambda e, model=model, opt=opt: full_batch_epoch(model, opt, x, y),
            desc=f"{name} n={n}",
        ):
            key = f"n{n}/epoch_{ep}"
            if not run.has(key):
                geo = toy_geometry(model, grid)
                with torch.no_grad():
                    acc = float((logits(model, x).argmax(1) == y).double().mean())
                rec = {"epoch": ep, "width": n, "train_accuracy": acc, **{k: v.tolist() for k, v in geo.items()}}
                if extra_metrics is not None:
                    rec.update(extra_metrics(geo, grid))
                run.record(key, rec)
            recs[ep] = run.results["records"][key]
        out[n] = recs
        fig = heat_figure(name, n, recs, axis, x, y, run, true_boundary)
        run.savefig(fig, f"heatmaps_n{n}")
        if gif:
            save_gif(run, f"training_n{n}", recs, axis, true_boundary)
    return out


def heat_figure(name, n, recs, axis, x, y, run, true_boundary=None):
    epochs = sorted(recs)
    row_vol, row_r = [], []
    for ep in epochs:
        r = recs[ep]
        extra = f", ratio {r['boundary_ratio']:.2f}" if "boundary_ratio" in r else ""
        title = f"epoch {ep} (acc {r['train_accuracy']:.2f}{extra})"
        few = x.shape[0] <= 50  # draw the training points only when they do not hide the map
        common = {
            "margin": r["margin"],
            "points": x if few else None,
            "labels": y if few else None,
            "true_boundary": true_boundary,
        }
        row_vol.append({"values": r["log10vol"], "title": title, **common})
        row_r.append({"values": r["ricci"], "symmetric": True, **common})
    fig = fg.plot.heatmap_grid(
        [row_vol, row_r],
        axis,
        row_labels=[r"$\log_{10}$ vol", "Ricci scalar R"],
        suptitle=f"{name}: 2-{n}-2 sigmoid net, first-layer geometry ({run.mode} mode); white = decision boundary",
    )
    return fig


def config(args) -> dict:
    if args.tiny:
        cfg = {"widths": [2, 8], "epochs": 60, "snapshots": [0, 60]}
    elif args.full:
        cfg = {"widths": [2, 250], "epochs": 2000, "snapshots": [0, 10, 50, 100, 250, 500, 1000, 2000]}
    else:
        cfg = {"widths": [2, 20], "epochs": 2000, "snapshots": [0, 100, 500, 2000]}
    if args.widths:
        cfg["widths"] = args.widths
    if args.epochs:
        cfg["snapshots"] = sorted({s for s in cfg["snapshots"] if s < args.epochs} | {args.epochs})
        cfg["epochs"] = args.epochs
    cfg.update(
        {
            "task": "xor",
            "activation": "sigmoid",
            "optimizer": "sgd",
            "lr": 0.02,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "grid": "40x40 over [-1.5, 1.5]^2",
            "n_grid": 40,
            "seed": args.seed,
            "tiny": args.tiny,
            "curvature_convention": "true (original code: 3x)",
        }
    )
    return cfg


def main(argv=None) -> dict:
    args = add_common(parser("xor", __doc__)).parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config(args)
    run = TaggedRun("xor", args, cfg)
    x, y = data.xor_data()
    grid, axis = slices.grid_2d(-1.5, 1.5, cfg["n_grid"])
    res = run_toy("xor", run, x, y, cfg, grid, axis, gif=args.gif)
    summ = {}
    for n, recs in res.items():
        last = recs[max(recs)]
        summ[f"n{n}"] = {
            "final_accuracy": last["train_accuracy"],
            "log10vol_range_final": [min(last["log10vol"]), max(last["log10vol"])],
            "max_abs_ricci_final": max(abs(v) for v in last["ricci"] if v == v),
        }
    run.summary(**summ)
    print(f"wrote {run.out}/results.json and {len(run.results['figures'])} figures", file=sys.stderr)
    return run.results


if __name__ == "__main__":
    main()
