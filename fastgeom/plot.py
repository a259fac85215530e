"""Figures for the experiments: heat maps with decision boundaries, interpolation lines coloured by
predicted class, plane panels (ternary = convex hull, and the full affine patch), spectra over
epochs, histograms and radial curves.

Every function draws on matplotlib axes (created when not given) and returns the figure or the
artist; nothing here computes geometry. Conventions:

* 2-D grids come from :func:`fastgeom.slices.grid_2d` (x1 is the slow index), so a value vector of
  length n*n reshapes to (n, n) with rows = x1; it is drawn with x1 horizontal.
* Planes come from :func:`fastgeom.slices.plane`; values are given per kept point (``plane.points``)
  and placed on the n x n grid with :func:`plane_image` (NaN outside the kept points).
* ``epochs`` are integers; 0 means the network at initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from .slices import ANCHORS_AB, Plane  # noqa: E402

CLASS_CMAP = "tab10"


def _np(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().to(torch.float64).numpy()
    return np.asarray(v, dtype=np.float64)


def _axes(ax, figsize=(4.5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return ax.figure, ax


def grid_image(values, n: int) -> np.ndarray:
    """(n*n,) values on a slices.grid_2d grid (x1 slow) -> (n, n) array indexed [x2, x1] for imshow."""
    v = _np(values)
    if v.size != n * n:
        raise ValueError(f"expected {n * n} grid values for an {n}x{n} grid, got {v.size}")
    return v.reshape(n, n).T


# ---------------------------------------------------------------------------------------------
# 2-D heat maps
# ---------------------------------------------------------------------------------------------
def heatmap(
    values,
    axis,
    ax=None,
    *,
    margin=None,
    true_boundary: Callable | None = None,
    points=None,
    labels=None,
    title: str | None = None,
    cmap: str = "viridis",
    vmin=None,
    vmax=None,
    symmetric: bool = False,
    colorbar: str | None = None,
):
    """Heat map of grid values (n*n,) over a 2-D grid with axis values ``axis`` (n,).

    ``margin`` (n*n,): logit difference; its zero level (the network's decision boundary) is drawn in
    white. ``true_boundary``: x1 -> x2 of the task's true boundary (red dashed). ``points`` (m, 2)
    with ``labels`` (m,): training data. ``symmetric``: colour limits +-max|v| (for curvature).
    Returns the AxesImage (``im.axes.figure`` is the figure)."""
    fig, ax = _axes(ax)
    a = _np(axis)
    n = a.size
    img = grid_image(values, n)
    finite = img[np.isfinite(img)]
    if symmetric and finite.size:
        m = float(np.abs(finite).max()) or 1.0
        vmin, vmax = -m, m
        cmap = "RdBu_r" if cmap == "viridis" else cmap
    im = ax.imshow(
        img,
        origin="lower",
        extent=(a[0], a[-1], a[0], a[-1]),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    if margin is not None:
        mg = grid_image(margin, n)
        if np.nanmin(mg) < 0 < np.nanmax(mg):
            ax.contour(a, a, mg, levels=[0.0], colors="white", linewidths=1.4)
    if true_boundary is not None:
        t = np.linspace(a[0], a[-1], 400)
        yb = _np(true_boundary(torch.as_tensor(t)))
        ax.plot(t, yb, "r--", lw=1)
        ax.set_ylim(a[0], a[-1])
    if points is not None:
        p = _np(points)
        c = _np(labels) if labels is not None else "k"
        ax.scatter(p[:, 0], p[:, 1], c=c, cmap="coolwarm", s=14, edgecolors="k", linewidths=0.4)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if colorbar:
        fig.colorbar(im, ax=ax, label=colorbar, shrink=0.85)
    return im


def heatmap_grid(
    panels: Sequence[Sequence[dict]],
    axis,
    *,
    row_labels: Sequence[str] = (),
    col_titles: Sequence[str] = (),
    suptitle: str | None = None,
    share_color_by_row: bool = True,
    panel_size=(3.0, 2.7),
):
    """Rows x columns of heat maps; each panel is a dict of :func:`heatmap` keyword arguments with
    ``values`` (and optionally ``symmetric``/``margin``/...). Colour limits are shared within a row
    (symmetric rows: +-95th percentile of |v|, as curvature has rare huge values where g is nearly singular).
    Returns the figure."""
    nr, nc = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(
        nr, nc, figsize=(panel_size[0] * nc + 0.8, panel_size[1] * nr + 0.5), squeeze=False, constrained_layout=True
    )
    for i, row in enumerate(panels):
        kw_row = {}
        if share_color_by_row:
            vals = np.concatenate([_np(p["values"]).ravel() for p in row])
            vals = vals[np.isfinite(vals)]
            if vals.size:
                if row[0].get("symmetric"):
                    m = float(np.percentile(np.abs(vals), 95)) or 1.0
                    kw_row = {"vmin": -m, "vmax": m, "cmap": "RdBu_r"}
                else:
                    kw_row = {"vmin": float(vals.min()), "vmax": float(vals.max())}
        im = None
        for j, p in enumerate(row):
            kw = dict(p)
            values = kw.pop("values")
            if share_color_by_row:
                kw.pop("symmetric", None)
                kw.update({k: v for k, v in kw_row.items() if k not in p or k == "cmap"})
            im = heatmap(values, axis, axes[i, j], **kw)
            if i == 0 and j < len(col_titles) and not p.get("title"):
                axes[i, j].set_title(col_titles[j], fontsize=9)
            if j:
                axes[i, j].set_ylabel("")
            if i < nr - 1:
                axes[i, j].set_xlabel("")
        for j in range(len(row), nc):
            axes[i, j].axis("off")
        if im is not None:
            fig.colorbar(im, ax=axes[i, :], label=row_labels[i] if i < len(row_labels) else None, shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# 1-D interpolation paths
# ---------------------------------------------------------------------------------------------
def path_line(t, values, classes, ax=None, *, n_classes: int = 10, lw: float = 2.0, label: str | None = None):
    """A line (t, values) whose segments are coloured by the predicted class ``classes`` (ints, same
    length). Returns the LineCollection."""
    fig, ax = _axes(ax)
    t, v, c = _np(t), _np(values), _np(classes).astype(int)
    if not (t.shape == v.shape == c.shape):
        raise ValueError(f"t, values and classes must have one shape, got {t.shape}, {v.shape}, {c.shape}")
    pts = np.stack([t, v], axis=1)
    segs = np.stack([pts[:-1], pts[1:]], axis=1)
    cmap = plt.get_cmap(CLASS_CMAP, max(n_classes, 2))
    lc = LineCollection(list(segs), colors=cmap(c[:-1] % cmap.N), linewidths=lw, label=label)
    ax.add_collection(lc)
    ax.autoscale_view()
    return lc


def class_legend(ax, classes: Sequence[int], names: Sequence[str] | None = None, n_classes: int = 10, **kw):
    """Legend with one coloured patch per class in ``classes``."""
    from matplotlib.patches import Patch

    cmap = plt.get_cmap(CLASS_CMAP, max(n_classes, 2))
    handles = [
        Patch(color=cmap(int(k) % cmap.N), label=(names[int(k)] if names else str(int(k))))
        for k in sorted(set(int(k) for k in classes))
    ]
    ax.legend(handles=handles, title="predicted", fontsize=7, title_fontsize=7, **kw)


def paths_over_epochs(
    paths: Mapping[str, Mapping[int, dict]],
    *,
    ylabel: str = r"$\log_{10}$ vol",
    suptitle: str | None = None,
    n_classes: int = 10,
    panel_size=(3.2, 2.6),
    sharey: bool = False,
):
    """One row per path, one column per epoch. ``paths[name][epoch]`` is a dict with ``t`` (N,),
    ``values`` (N,), ``classes`` (N,) and optionally ``entropy`` (N,) (drawn grey on a twin axis).
    Returns the figure."""
    names = list(paths)
    epochs = sorted({e for p in paths.values() for e in p})
    fig, axes = plt.subplots(
        len(names),
        len(epochs),
        figsize=(panel_size[0] * len(epochs), panel_size[1] * len(names)),
        squeeze=False,
        constrained_layout=True,
        sharey="row" if sharey else False,
    )
    seen: set = set()
    for i, name in enumerate(names):
        for j, ep in enumerate(epochs):
            ax = axes[i, j]
            d = paths[name].get(ep)
            if d is None:
                ax.axis("off")
                continue
            path_line(d["t"], d["values"], d["classes"], ax, n_classes=n_classes)
            seen.update(int(c) for c in _np(d["classes"]).astype(int))
            if "entropy" in d:
                tw = ax.twinx()
                tw.plot(_np(d["t"]), _np(d["entropy"]), color="0.5", lw=0.8, ls=":")
                tw.set_ylim(-0.02, 1.02)
                if j == len(epochs) - 1:
                    tw.set_ylabel("entropy", fontsize=7, color="0.4")
                else:
                    tw.set_yticklabels([])
                tw.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(f"epoch {ep}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\n{ylabel}", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("t", fontsize=8)
            ax.tick_params(labelsize=7)
    class_legend(axes[0, -1], sorted(seen), n_classes=n_classes, loc="upper right")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


CURVATURE_COLUMNS = ("K", "R")


def curvature_limits(values, q: float = 99.0) -> tuple[float, float]:
    """Symmetric colour limits (-m, m) for a signed curvature map: m = the q-th percentile of |values|
    (finite ones; a few extreme points near singular ones must not wash out the map), 1 if all are 0/NaN."""
    v = np.abs(_np(values))
    v = v[np.isfinite(v)]
    m = float(np.percentile(v, q)) if v.size else 0.0
    return (-m, m) if m > 0 else (-1.0, 1.0)


def value_colors(column: str, values, cmap: str = "viridis") -> dict:
    """imshow colour keywords for a value column: curvature (K, R) gets a diverging map centred at 0
    (RdBu_r unless another cmap than the default is asked for), other columns ``cmap``."""
    if column in CURVATURE_COLUMNS:
        lo, hi = curvature_limits(values)
        return {"cmap": "RdBu_r" if cmap == "viridis" else cmap, "vmin": lo, "vmax": hi}
    return {"cmap": cmap}


# ---------------------------------------------------------------------------------------------
# Planes through three anchors
# ---------------------------------------------------------------------------------------------
def plane_image(plane: Plane, values) -> np.ndarray:
    """Values at ``plane.points`` (P,) -> (n, n) array indexed [b, a] for imshow, NaN where no point."""
    img = np.full(plane.n * plane.n, np.nan)
    img[_np(plane.index).astype(int)] = _np(values)
    return img.reshape(plane.n, plane.n).T


def _triangle(ax, anchor_names: Sequence[str] | None, color="k"):
    tri = np.array(ANCHORS_AB + (ANCHORS_AB[0],))
    ax.plot(tri[:, 0], tri[:, 1], color=color, lw=0.8)
    if anchor_names:
        offs = ((-0.02, 0.04), (0.02, 0.04), (0.0, -0.09))
        for (a, b), name, (da, db) in zip(ANCHORS_AB, anchor_names, offs):
            ax.annotate(str(name), (a, b), (a + da, b + db), fontsize=8, ha="center", color=color, fontweight="bold")


def plane_panel(
    plane: Plane,
    values,
    ax=None,
    *,
    kind: str = "value",
    title: str | None = None,
    anchor_names: Sequence[str] | None = None,
    n_classes: int = 10,
    cmap: str | None = None,
    vmin=None,
    vmax=None,
    colorbar: str | None = None,
):
    """One panel of a plane (MATH.md 8.2) in (a, b) coordinates, with the anchor triangle.

    ``kind``: ``"value"`` (continuous, e.g. log10 vol), ``"curvature"`` (signed, diverging map centred at 0),
    ``"class"`` (predicted class, tab10) or
    ``"entropy"`` (normalised softmax entropy, fixed limits [0, 1]). A convex-hull plane (all kept
    points inside) is drawn as the ternary triangle; an affine plane fills [-extent, extent]^2."""
    fig, ax = _axes(ax)
    img = plane_image(plane, values)
    ext = float(plane.axis[0]), float(plane.axis[-1])
    if kind == "class":
        cm = plt.get_cmap(CLASS_CMAP, max(n_classes, 2))
        im = ax.imshow(
            img,
            origin="lower",
            extent=(ext[0], ext[1], ext[0], ext[1]),
            cmap=cm,
            vmin=-0.5,
            vmax=cm.N - 0.5,
            interpolation="nearest",
        )
    elif kind == "entropy":
        im = ax.imshow(
            img,
            origin="lower",
            extent=(ext[0], ext[1], ext[0], ext[1]),
            cmap=cmap or "magma",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
        )
    elif kind == "value":
        im = ax.imshow(
            img,
            origin="lower",
            extent=(ext[0], ext[1], ext[0], ext[1]),
            cmap=cmap or "viridis",
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
    elif kind == "curvature":  # signed: diverging map centred at 0, symmetric limits
        lo, hi = curvature_limits(values) if vmin is None and vmax is None else (vmin, vmax)
        im = ax.imshow(
            img,
            origin="lower",
            extent=(ext[0], ext[1], ext[0], ext[1]),
            cmap=cmap or "RdBu_r",
            vmin=lo,
            vmax=hi,
            interpolation="nearest",
        )
    else:
        raise ValueError(f"kind must be 'value', 'curvature', 'class' or 'entropy', got {kind!r}")
    convex = bool(_np(plane.inside).all())
    _triangle(ax, anchor_names, color="w" if kind != "class" else "k")
    if convex:
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.65, 0.4)
        ax.set_aspect("equal")
        ax.axis("off")
    else:
        ax.set_xlabel("a", fontsize=8)
        ax.set_ylabel("b", fontsize=8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, label=colorbar, shrink=0.8)
    return im


def plane_triptych(
    planes: Mapping[str, dict],
    *,
    anchor_names: Sequence[str] | None = None,
    suptitle: str | None = None,
    n_classes: int = 10,
    value_label: str = r"$\log_{10}$ vol",
    panel_size=(3.0, 2.8),
    share_values: bool = True,
):
    """One row per plane (e.g. "convex hull", "affine hull" or per epoch), three columns: predicted
    class, normalised entropy, value (log10 vol). ``planes[row] = {"plane": Plane, "classes": (P,),
    "entropy": (P,), "values": (P,)}``. Value colour limits are shared across rows unless
    ``share_values=False``. Returns the figure."""
    rows = list(planes)
    allv = np.concatenate([_np(planes[r]["values"]) for r in rows])
    allv = allv[np.isfinite(allv)]
    vmin, vmax = (float(allv.min()), float(allv.max())) if allv.size and share_values else (None, None)
    fig, axes = plt.subplots(
        len(rows),
        3,
        figsize=(panel_size[0] * 3 + 0.6, panel_size[1] * len(rows)),
        squeeze=False,
        constrained_layout=True,
    )
    for i, r in enumerate(rows):
        d = planes[r]
        p = d["plane"]
        plane_panel(
            p,
            d["classes"],
            axes[i, 0],
            kind="class",
            anchor_names=anchor_names,
            n_classes=n_classes,
            title=f"{r}: prediction",
        )
        im_e = plane_panel(
            p, d["entropy"], axes[i, 1], kind="entropy", anchor_names=anchor_names, title=f"{r}: entropy"
        )
        im_v = plane_panel(
            p,
            d["values"],
            axes[i, 2],
            kind="value",
            anchor_names=anchor_names,
            vmin=vmin,
            vmax=vmax,
            title=f"{r}: {value_label}",
        )
        fig.colorbar(im_e, ax=axes[i, 1], shrink=0.75)
        fig.colorbar(im_v, ax=axes[i, 2], shrink=0.75)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Spectra, histograms, radial curves
# ---------------------------------------------------------------------------------------------
def spectra_over_epochs(
    spectra: Mapping[int, object],
    ax=None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    log10: bool = True,
    cmap: str = "viridis",
):
    """Singular values (or metric eigenvalues) by epoch: ``spectra[epoch]`` is (K, r) for K anchor
    points (or (r,)), descending. One colour per epoch (init = darkest), one line style per anchor.
    Zeros (beyond the rank) are not drawn. Returns the figure."""
    fig, ax = _axes(ax, figsize=(5, 3.6))
    epochs = sorted(spectra)
    cm = plt.get_cmap(cmap)
    styles = ["-", "--", ":", "-."]
    for i, ep in enumerate(epochs):
        s = _np(spectra[ep])
        s = s[None] if s.ndim == 1 else s
        col = cm(i / max(len(epochs) - 1, 1))
        for k, row in enumerate(s):
            row = row[row > 0]
            y = np.log10(row) if log10 else row
            lab = f"epoch {ep}" if k == 0 else None
            ax.plot(np.arange(1, y.size + 1), y, styles[k % len(styles)], color=col, lw=1.1, label=lab)
    if labels:
        for k, name in enumerate(labels):
            ax.plot([], [], styles[k % len(styles)], color="0.3", label=f"anchor {name}")
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel(r"$\log_{10}$ eigenvalue" if log10 else "eigenvalue", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def histograms(
    groups: Mapping[str, object],
    ax=None,
    *,
    bins: int = 40,
    xlabel: str = r"$\log_{10}$ vol",
    title: str | None = None,
    density: bool = True,
):
    """Overlaid histograms of each group's values (e.g. clean vs ambiguous digits). Returns the figure."""
    fig, ax = _axes(ax, figsize=(5, 3.6))
    allv = np.concatenate([_np(v).ravel() for v in groups.values()])
    allv = allv[np.isfinite(allv)]
    edges = np.histogram_bin_edges(allv, bins=bins) if allv.size else bins
    for name, v in groups.items():
        v = _np(v).ravel()
        ax.hist(v[np.isfinite(v)], bins=edges, alpha=0.55, density=density, label=f"{name} (n={v.size})")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("density" if density else "count", fontsize=8)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def curves(
    x,
    ys: Mapping[str, object],
    ax=None,
    *,
    reference=None,
    reference_label: str = "closed form",
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    cmap: str = "viridis",
    logy: bool = False,
):
    """Lines ``ys[label]`` (N,) against ``x`` (N,) coloured in order, plus a black ``reference`` (N,)
    (e.g. the infinite-width closed form). Returns the figure."""
    fig, ax = _axes(ax, figsize=(4.5, 3.4))
    xs = _np(x)
    cm = plt.get_cmap(cmap)
    for i, (lab, y) in enumerate(ys.items()):
        ax.plot(xs, _np(y), color=cm(i / max(len(ys) - 1, 1)), lw=1.0, alpha=0.9, label=lab)
    if reference is not None:
        ax.plot(xs, _np(reference), "k--", lw=1.6, label=reference_label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def log10(x):
    """log10 of a natural-log quantity (logvol in nats -> log10 vol), as numpy."""
    return _np(x) / math.log(10)
