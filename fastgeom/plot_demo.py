"""Figure for the demo: log10 volume element heat maps with decision boundaries."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def heatmaps(snaps: dict, ax_vals: torch.Tensor, path: str) -> None:
    a = ax_vals.numpy()
    fig, axes = plt.subplots(1, len(snaps), figsize=(5.2 * len(snaps), 4.4), constrained_layout=True)
    vmin = min(float(s["log10vol"].min()) for s in snaps.values())
    vmax = max(float(s["log10vol"].max()) for s in snaps.values())
    for axis, (tag, s) in zip(axes, snaps.items()):
        # rows of the grid are x1 (slow index): transpose so x1 is horizontal
        im = axis.pcolormesh(a, a, s["log10vol"].T.numpy(), shading="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        axis.contour(a, a, s["margin"].T.numpy(), levels=[0.0], colors="white", linewidths=1.5)
        t = torch.linspace(-1, 1, 200)
        axis.plot(t, 0.6 * torch.sin(7 * t - 1), "r--", lw=1, label="true boundary")
        axis.set_xlim(-1, 1)
        axis.set_ylim(-1, 1)
        axis.set_title(f"{tag} (epoch {s['epoch']}, acc {s['accuracy']:.2f}, boundary ratio {s['boundary_ratio']:.2f})",
                       fontsize=9)
        axis.set_xlabel("$x_1$")
        axis.set_ylabel("$x_2$")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.colorbar(im, ax=axes, label=r"$\log_{10}$ volume element (first hidden layer)")
    fig.suptitle("fastgeom demo: sinusoid task, white = network decision boundary")
    fig.savefig(path, dpi=110)
    plt.close(fig)
