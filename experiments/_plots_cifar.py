"""Figures of the CIFAR / SSL drivers, drawn with ``fastgeom.plot`` from the records of results.json
(``_cifar_eval.snapshot``). Only the per-block panel layout is specific to this file."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fastgeom import plot as fplot  # noqa: E402
from fastgeom.slices import Plane  # noqa: E402


def _epochs(records: dict) -> dict[int, dict]:
    return {int(k.split("_")[1]): v["geometry"] for k, v in records.items() if k.startswith("epoch_")}


def _plane(entry: dict) -> Plane:
    n, ext = entry["n"], entry["extent"]
    a, b = torch.tensor(entry["a"]), torch.tensor(entry["b"])
    from fastgeom.slices import barycentric

    lam = barycentric(a, b)
    return Plane(
        points=None,
        a=a,
        b=b,
        lam=lam,
        inside=(lam >= 0).all(-1),
        index=torch.tensor(entry["index"]),
        axis=torch.linspace(-ext, ext, n, dtype=torch.float64),
        n=n,
    )


def _cls(classes, k) -> str:
    return str(classes[k]).split(" ")[0] if classes else str(k)


def paths_figure(records: dict, classes, test_y, title: str, maps: list[str]):
    """Rows: each pair x each feature map; columns: epochs; line coloured by predicted class, entropy dotted."""
    eps = _epochs(records)
    rows = {}
    for e, geo in sorted(eps.items()):
        for p in geo["paths"]:
            i, j = p["anchors"]
            for m in maps:
                name = f"{_cls(classes, int(test_y[i]))}-{_cls(classes, int(test_y[j]))} [{m}]"
                rows.setdefault(name, {})[e] = {
                    "t": p["t"],
                    "values": fplot.log10(p["logvol"][m]),
                    "classes": p["pred"],
                    "entropy": p["entropy"],
                }
    return fplot.paths_over_epochs(rows, suptitle=title)


def planes_figure(records: dict, epoch: int, names: list[str], classes, test_y, title: str, map_name: str):
    """Triptych (prediction, entropy, log10 vol) for the planes ``names`` at ``epoch``."""
    geo = _epochs(records)[epoch]
    rows, anchor_names = {}, None
    for nm in names:
        if nm not in geo["planes"]:
            continue
        e = geo["planes"][nm]
        if map_name not in e["logvol"]:
            continue
        anchor_names = [_cls(classes, int(test_y[k])) for k in e["anchors"]]
        label = f"{e['hull']} {'-'.join(anchor_names)}" + ("" if map_name == "euclidean" else f" [{map_name}]")
        rows[label] = {
            "plane": _plane(e),
            "classes": e["pred"],
            "entropy": e["entropy"],
            "values": fplot.log10(e["logvol"][map_name]),
        }
    if not rows:
        return None
    return fplot.plane_triptych(
        rows, anchor_names=anchor_names if len(rows) == 1 else None, suptitle=f"{title}, epoch {epoch}"
    )


def curvature_figure(records: dict, names: list[str], classes, test_y, title: str, map_name: str):
    """Rows: planes; columns: for each plane epoch, log10 vol beside the Gaussian curvature K (diverging map
    centred at 0, +-99th percentile of |K| per panel), with the boundary ratio of |K| in the title."""
    eps = {e: g for e, g in _epochs(records).items() if any(n in g["planes"] for n in names)}
    rows = [
        n
        for n in names
        if any(
            n in g["planes"] and "curvature" in g["planes"][n] and map_name in g["planes"][n]["curvature"]
            for g in eps.values()
        )
    ]
    if not rows:
        return None
    cols = sorted(eps)
    fig, axes = plt.subplots(
        len(rows), 2 * len(cols), figsize=(3.2 * 2 * len(cols), 3.0 * len(rows)), squeeze=False, constrained_layout=True
    )
    for i, nm in enumerate(rows):
        for j, e in enumerate(cols):
            entry = eps[e]["planes"].get(nm)
            ax_v, ax_k = axes[i, 2 * j], axes[i, 2 * j + 1]
            if entry is None or map_name not in entry.get("curvature", {}):
                ax_v.axis("off")
                ax_k.axis("off")
                continue
            pl = _plane(entry)
            anchors = [_cls(classes, int(test_y[k])) for k in entry["anchors"]]
            fplot.plane_panel(
                pl,
                fplot.log10(entry["logvol"][map_name]),
                ax_v,
                kind="value",
                title=f"epoch {e}: " + r"$\log_{10}$ vol",
                anchor_names=anchors,
                colorbar="log10 vol",
            )
            K = [float("nan") if k is None else k for k in entry["curvature"][map_name]]
            br = entry["curvature_boundary_ratio"].get(map_name)
            fplot.plane_panel(
                pl,
                K,
                ax_k,
                kind="curvature",
                anchor_names=anchors,
                colorbar="K",
                title=f"epoch {e}: K" + ("" if br is None else f" (|K| boundary ratio {br:.2f})"),
            )
        axes[i, 0].set_ylabel(f"{nm} [{map_name}]", fontsize=8)
    fig.suptitle(f"{title}: Gaussian curvature of the plane beside log volume", fontsize=10)
    return fig


def blocks_figure(records: dict, title: str):
    """One panel per block (layer1..layer4, each average-pooled), log10 vol along the first path, a line per epoch."""
    eps = _epochs(records)
    blocks = list(next(iter(eps.values()))["blocks"])
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.4 * len(blocks), 3.0), squeeze=False, constrained_layout=True)
    for ax, b in zip(axes[0], blocks):
        t = eps[min(eps)]["blocks"][b]["t"]
        fplot.curves(
            t,
            {f"epoch {e}": fplot.log10(g["blocks"][b]["logvol"]) for e, g in sorted(eps.items())},
            ax,
            xlabel="t (first path)",
            ylabel=r"$\log_{10}$ vol" if b == blocks[0] else "",
            title=b,
        )
    fig.suptitle(title, fontsize=10)
    return fig


def spectra_figure(records: dict, classes, test_y, title: str):
    """Singular values of J/sqrt(d_out) at the anchors, one colour per epoch, one panel per anchor."""
    eps = _epochs(records)
    keys = list(next(iter(eps.values()))["spectra"])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False, constrained_layout=True)
    for ax, k in zip(axes[0], keys):
        fplot.spectra_over_epochs(
            {e: g["spectra"][k] for e, g in sorted(eps.items())},
            ax,
            title=f"anchor {k} ({_cls(classes, int(test_y[int(k)]))})",
        )
        ax.set_ylabel(r"$\log_{10}$ singular value", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def make_figures(run, classes, test_y, title: str, maps: list[str]) -> None:
    """All figures of a driver from ``run.results['records']``; saved through ``run.savefig``."""
    recs = run.results["records"]
    eps = _epochs(recs)
    if not eps:
        return
    run.savefig(paths_figure(recs, classes, test_y, title, maps), "paths_over_epochs")
    run.savefig(blocks_figure(recs, title), "per_block_logvol")
    run.savefig(spectra_figure(recs, classes, test_y, title), "spectra_over_epochs")
    for e in sorted(eps):
        planes = eps[e]["planes"]
        if not planes:
            continue
        conv = [n for n in planes if n.startswith("convex")]
        aff = [n for n in planes if n.startswith("affine")]
        same = [n for n in planes if n.startswith("same")]
        for tag, names, m in [("convex", conv, maps[0]), ("affine", aff, maps[0]), ("same_class", same, maps[0])] + [
            (f"affine_{m}", aff, m) for m in maps[1:]
        ]:
            fig = planes_figure(recs, e, names, classes, test_y, title, m)
            if fig is not None:
                run.savefig(fig, f"plane_{tag}_epoch{e}")
    names = sorted({n for g in eps.values() for n in g["planes"]})
    fig = curvature_figure(recs, names, classes, test_y, title, maps[0])
    if fig is not None:
        run.savefig(fig, "plane_curvature")
