"""The embedded default job: train the sinusoid task (MATH.md 7.2) and map its geometry.

A 2-20-2 sigmoid net (the authors' code gallery; f(x) = lin2(sigmoid(lin1 x))/sqrt(20), N(0,1)
init) is trained on 400 points labelled by y = 1[x2 > 0.6 sin(7 x1 - 1)] (Adam lr 0.05, full
batch, float64; experiments.sinusoid documents why Adam rather than the paper's SGD). On an 80x80
grid over [-1, 1]^2, at initialisation and after training, ``fastgeom.logvol`` (the general
engine) gives the log volume element of phi(x) = sigmoid(W1 x + b1)/sqrt(20), checked against the
closed form of ``fastgeom.shallow``, which also gives the Ricci scalar. The PNG shows the heat maps
with the decision boundary; the summary reports the boundary ratio (mean volume element within
0.15 of the true boundary over the mean elsewhere). No downloads, CPU, well under a minute.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch

from .sinusoid import boundary_ratio, sinusoid_boundary, sinusoid_data


def run(
    out_dir: str = "demo_out", epochs: int = 1000, n_grid: int = 80, width: int = 20, seed: int = 0, progress=True
) -> dict:
    """Train, evaluate the geometry at initialisation and after training, plot, and summarise."""
    import fastgeom as fg

    from . import plot, shallow
    from .train import ShallowNet, accuracy, full_batch_epoch

    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    x, y = sinusoid_data(seed=seed)
    net = ShallowNet(2, width, 2, "sigmoid").double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    grid = torch.cartesian_prod(*(2 * [torch.linspace(-1, 1, n_grid, dtype=torch.float64)]))  # x1 slow
    axis = grid[::n_grid, 0]
    snaps = {}
    from tqdm.auto import trange

    for tag, ep in (("init", 0), ("trained", epochs)):
        for _ in trange(ep, desc="train (Adam)", disable=not progress, leave=False):
            full_batch_epoch(net, opt, x, y)
        # the general engine (any model, any layer) ...
        lv = fg.logvol(net, grid, layer="act", normalize=True, progress=progress)
        # ... and the closed forms of the shallow net, which it must agree with
        lv_closed = shallow.log_volume_element(net.W, net.b, grid, "sigmoid")
        ricci = shallow.ricci_scalar(net.W, net.b, grid, "sigmoid")
        with torch.no_grad():
            logits = net(grid)
        snaps[tag] = {
            "epoch": ep,
            "accuracy": accuracy(net, x, y),
            "log10vol": lv / math.log(10),
            "ricci": ricci,
            "margin": logits[:, 1] - logits[:, 0],
            "engine_vs_closed_form": float((lv - lv_closed).abs().max()),
            "boundary_ratio": boundary_ratio(grid, lv.exp()),
        }

    def title(t, s):
        return f"{t} (epoch {s['epoch']}, train acc {s['accuracy']:.2f})"

    truth = sinusoid_boundary
    panels = [
        [
            {"values": s["log10vol"], "margin": s["margin"], "true_boundary": truth, "title": title(t, s)}
            for t, s in snaps.items()
        ],
        [
            {"values": s["ricci"], "margin": s["margin"], "true_boundary": truth, "symmetric": True}
            for s in snaps.values()
        ],
    ]
    fig = plot.heatmap_grid(
        panels,
        axis,
        row_labels=[r"$\log_{10}$ volume element", "Ricci scalar R"],
        suptitle=f"fastgeom demo: sinusoid task, 2-{width}-2 sigmoid net, first-layer geometry "
        "(white: decision boundary, red: true boundary)",
        panel_size=(4.2, 3.6),
    )
    png = os.path.join(out_dir, "sinusoid_logvol.png")
    fig.savefig(png, dpi=110)
    summary = {
        "task": "sinusoid (MATH.md 7.2)",
        "model": f"2-{width}-2 sigmoid net, N(0,1) init, float64",
        "training": f"Adam lr 0.05, full batch, {epochs} epochs",
        "feature map": f"phi(x) = sigmoid(W1 x + b1)/sqrt({width})",
        "grid": f"{n_grid}x{n_grid} over [-1,1]^2",
        "seconds": round(time.time() - t0, 1),
        "png": png,
    }
    for tag, s in snaps.items():
        summary[tag] = {
            "epoch": s["epoch"],
            "train_accuracy": round(s["accuracy"], 4),
            "log10vol_min": round(float(s["log10vol"].min()), 3),
            "log10vol_max": round(float(s["log10vol"].max()), 3),
            "boundary_ratio": round(s["boundary_ratio"], 3),
            "ricci_min": round(float(s["ricci"].min()), 3),
            "ricci_max": round(float(s["ricci"].max()), 3),
            "max |logvol engine - closed form|": s["engine_vs_closed_form"],
        }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
