"""The embedded default job: train the sinusoid task (MATH.md 7.2) and map its geometry.

A [2, 8, 8, 2] sigmoid MLP is trained on 400 points labelled by y = 1[x2 > 0.6 sin(7 x1 - 1)]
(SGD, lr 0.05, momentum 0.9, full batch, float64). fastgeom.logvol then evaluates the log volume
element of the first hidden layer, phi(x) = sigmoid(W1 x + b1) / sqrt(8), on an 80x80 grid over
[-1, 1]^2 at initialisation and after training; the PNG shows both heat maps with the network's
decision boundary and the true boundary. No downloads, CPU, well under a minute.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch
from torch import nn


def sinusoid_data(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ U([-1, 1]^2), y = 1[x2 > 0.6 sin(7 x1 - 1)] (MATH.md 7.2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = (x[:, 1] > 0.6 * torch.sin(7 * x[:, 0] - 1)).long()
    return x, y


class MLP(nn.Module):
    """Sigmoid MLP with the given widths, e.g. [2, 8, 8, 2]; hidden layers are ``hidden.<i>``."""

    def __init__(self, widths=(2, 8, 8, 2)):
        super().__init__()
        layers = []
        for i in range(len(widths) - 2):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.Sigmoid()]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(widths[-2], widths[-1])

    def forward(self, x):
        return self.out(self.hidden(x))


def train(model: nn.Module, x, y, epochs: int, lr: float = 0.05, momentum: float = 0.9, progress=True):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    from tqdm.auto import trange
    for _ in trange(epochs, desc="train", disable=not progress, leave=False):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def boundary_ratio(grid: torch.Tensor, vol: torch.Tensor, width: float = 0.15) -> float:
    """Mean volume element within `width` of the true boundary over the mean elsewhere."""
    dist = (grid[:, 1] - 0.6 * torch.sin(7 * grid[:, 0] - 1)).abs()
    near = dist < width
    return float(vol[near].mean() / vol[~near].mean())


def run(out_dir: str = "demo_out", epochs: int = 10000, n_grid: int = 80, seed: int = 0, progress=True) -> dict:
    import fastgeom as fg
    from . import plot_demo

    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    x, y = sinusoid_data(seed=seed)
    model = MLP().double()
    ax = torch.linspace(-1, 1, n_grid, dtype=torch.float64)
    grid = torch.cartesian_prod(ax, ax)  # x1 slow, x2 fast
    snaps = {}
    for tag, ep in (("init", 0), ("trained", epochs)):
        acc = train(model, x, y, ep, progress=progress) if ep else float((model(x).argmax(1) == y).double().mean())
        lv = fg.logvol(model, grid, layer="hidden.1", normalize=True, progress=progress)
        with torch.no_grad():
            logits = model(grid)
        snaps[tag] = {"epoch": ep, "accuracy": acc, "log10vol": (lv / math.log(10)).reshape(n_grid, n_grid),
                      "margin": (logits[:, 1] - logits[:, 0]).reshape(n_grid, n_grid),
                      "boundary_ratio": boundary_ratio(grid, lv.exp())}
    png = os.path.join(out_dir, "sinusoid_logvol.png")
    plot_demo.heatmaps(snaps, ax, png)
    summary = {"task": "sinusoid (MATH.md 7.2)", "model": "[2, 8, 8, 2] sigmoid MLP, float64",
               "layer": "hidden.1 (first hidden layer), features / sqrt(8)", "grid": f"{n_grid}x{n_grid} over [-1,1]^2",
               "epochs": epochs, "seconds": round(time.time() - t0, 1), "png": png}
    for tag, s in snaps.items():
        summary[tag] = {"epoch": s["epoch"], "train_accuracy": round(s["accuracy"], 4),
                        "log10vol_min": round(float(s["log10vol"].min()), 3),
                        "log10vol_max": round(float(s["log10vol"].max()), 3),
                        "boundary_ratio": round(s["boundary_ratio"], 3)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
