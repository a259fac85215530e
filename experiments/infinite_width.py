"""Infinite width (MATH.md 4, 6.1; paper section 4 / Appendix E, H): random shallow nets converge to
the NNGP geometry as the width grows; monomial Ricci curves; the Amari-Wu conformal kernel.

    python -m experiments.infinite_width --quick --out runs/infinite_width-quick
    python -m experiments.infinite_width --full  --out runs/infinite_width-full
    python -m experiments.infinite_width --tiny  --out /tmp/infinite_width-tiny   # CI smoke run

Figures:
* ``convergence``: volume element and Ricci scalar against |x| (d = 2) for random nets
  Phi(x) = sigma(W x + b)/sqrt(n), W ~ N(0, sigma_w^2), b ~ N(0, sigma_b^2), several widths, next to
  the closed form / quadrature NNGP values (``fastgeom.shallow`` vs ``fastgeom.nngp``); erf (=
  torch.erf) and sigmoid.
* ``errors``: the mean error over points and seeds against width (log-log, with an n^-1/2 guide):
  vol: |vol_n - vol_inf| / vol_inf; R: |R_n - R_inf| / (1 + |R_inf|).
* ``monomials``: NNGP Ricci scalar of sigma(z) = z^k against |x| (k = 2, 3, 4): d = 2 with
  sigma_b > 0 (a minimum at |x|* = 0.42237 sigma_b/sigma_w for k = 2, MATH 4.4) and d = 3 with sigma_b = 0.
* ``amari_wu``: an RBF SVM (sklearn.svm.SVC) on the two-moons toy task; the volume element of the
  conformally modified kernel c(x)c(y)K(x,y) with c built on the support vectors
  (``fastgeom.nngp.amari_wu_volume_element``) is magnified near the support vectors.

Nothing is trained, so there are no checkpoints; each (activation, width) result is written to
results.json as it finishes and skipped on rerun (resume). Curvature: true convention.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

import fastgeom as fg
from experiments.common import Run, parser
from fastgeom import slices

K2_XSTAR = 0.42237  # MATH 4.4: argmin of the k = 2 monomial Ricci scalar (d = 2) in units of sigma_b/sigma_w


def config(args) -> dict:
    if args.tiny:
        cfg = {"widths": [10, 100, 1000], "seeds": 2, "n_radii": 13, "n_angles": 2, "n_grid": 30}
    elif args.full:
        cfg = {"widths": [10, 100, 1000, 10000, 100000], "seeds": 10, "n_radii": 61, "n_angles": 8, "n_grid": 80}
    else:
        cfg = {"widths": [10, 100, 1000, 10000], "seeds": 3, "n_radii": 31, "n_angles": 4, "n_grid": 50}
    cfg.update(
        {
            "activations": ["erf", "sigmoid"],
            "sigma_w": 1.0,
            "sigma_b": 1.0,
            "d": 2,
            "r_max": 3.0,
            "monomials": [2, 3, 4],
            "amari_wu": {"task": "two moons, 200 points, noise 0.15", "svm_C": 1.0, "s": 0.5, "tau": 0.2},
            "seed": args.seed,
            "tiny": args.tiny,
            "curvature_convention": "true",
        }
    )
    return cfg


def probe_points(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (n_radii * n_angles, 2) on rays at evenly spaced angles; their radii."""
    r = torch.linspace(0, cfg["r_max"], cfg["n_radii"], dtype=torch.float64)
    th = torch.arange(cfg["n_angles"], dtype=torch.float64) * (2 * math.pi / cfg["n_angles"]) + 0.3
    pts = (r[None, :, None] * torch.stack([th.cos(), th.sin()], -1)[:, None, :]).reshape(-1, 2)
    return pts, r.repeat(cfg["n_angles"])


def convergence(run: Run, cfg: dict) -> dict:
    pts, radii = probe_points(cfg)
    sw, sb = cfg["sigma_w"], cfg["sigma_b"]
    out = {}
    jobs = [(a, n) for a in cfg["activations"] for n in cfg["widths"]]
    for act, n in tqdm(jobs, desc="widths", disable=not run.progress):
        ref_key = f"nngp/{act}"
        if not run.has(ref_key):
            run.record(
                ref_key,
                {
                    "radius": radii.tolist(),
                    "vol": fg.nngp.volume_element(pts, act, sw, sb).tolist(),
                    "ricci": fg.nngp.ricci_scalar(pts, act, sw, sb).tolist(),
                },
            )
        ref = run.results["records"][ref_key]
        key = f"finite/{act}/n{n}"
        if not run.has(key):
            vol_inf, R_inf = torch.tensor(ref["vol"]), torch.tensor(ref["ricci"])
            ev, er, first = [], [], None
            for s in range(cfg["seeds"]):
                g = torch.Generator().manual_seed(cfg["seed"] * 1000 + s)
                W = sw * torch.randn(n, cfg["d"], generator=g, dtype=torch.float64)
                b = sb * torch.randn(n, generator=g, dtype=torch.float64)
                geo = fg.shallow.geometry(W, b, pts, act)
                vol, R = geo["logvol"].exp(), geo["ricci"]
                ev.append(float(((vol - vol_inf).abs() / vol_inf).mean()))
                er.append(float(((R - R_inf).abs() / (1 + R_inf.abs())).nanmean()))
                if first is None:
                    first = {"vol": vol.tolist(), "ricci": R.tolist()}
            run.record(
                key,
                {
                    "width": n,
                    "activation": act,
                    "vol_rel_error": float(np.mean(ev)),
                    "ricci_error": float(np.mean(er)),
                    "vol_rel_error_per_seed": ev,
                    "ricci_error_per_seed": er,
                    "seed0": first,
                },
            )
        out[(act, n)] = run.results["records"][key]
    return out


def convergence_figures(run: Run, cfg: dict, res: dict) -> None:
    import matplotlib.pyplot as plt

    acts = cfg["activations"]
    fig, axes = plt.subplots(2, len(acts), figsize=(4.6 * len(acts), 6.4), constrained_layout=True, squeeze=False)
    na = cfg["n_angles"]
    nr = cfg["n_radii"]
    for j, act in enumerate(acts):
        ref = run.results["records"][f"nngp/{act}"]
        r = np.asarray(ref["radius"][:nr])
        for i, q in enumerate(("vol", "ricci")):
            ys = {f"n={n}": np.asarray(res[(act, n)]["seed0"][q][:nr]) for n in cfg["widths"]}
            fg.plot.curves(
                r,
                ys,
                axes[i, j],
                reference=np.asarray(ref[q][:nr]),
                reference_label="NNGP (n = inf)",
                xlabel="|x|",
                ylabel="volume element" if q == "vol" else "Ricci scalar R",
                title=f"{act}, one ray, seed 0" if i == 0 else None,
            )
    fig.suptitle(
        f"random {cfg['d']}-d shallow nets vs infinite width (sigma_w={cfg['sigma_w']}, "
        f"sigma_b={cfg['sigma_b']}; {na} rays x {nr} radii used for errors)",
        fontsize=9,
    )
    run.savefig(fig, "convergence")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    w = np.asarray(cfg["widths"], dtype=float)
    for ax, q, lab in (
        (axes[0], "vol_rel_error", "mean |vol_n - vol|/vol"),
        (axes[1], "ricci_error", "mean |R_n - R|/(1+|R|)"),
    ):
        for act in acts:
            ax.loglog(w, [res[(act, int(n))][q] for n in w], "o-", label=act)
        e0 = res[(acts[0], int(w[0]))][q]
        ax.loglog(w, e0 * (w / w[0]) ** -0.5, "k:", label=r"$\propto n^{-1/2}$")
        ax.set_xlabel("width n")
        ax.set_ylabel(lab, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"error vs the NNGP closed form / quadrature (mean over points and {cfg['seeds']} seeds)", fontsize=9)
    run.savefig(fig, "errors")


def monomials(run: Run, cfg: dict) -> dict:
    import matplotlib.pyplot as plt

    sw = cfg["sigma_w"]
    r = torch.linspace(0, 2.0, 401, dtype=torch.float64)
    out = {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, d, sb in ((axes[0], 2, 1.0), (axes[1], 3, 0.0)):
        x = torch.zeros(r.numel(), d, dtype=torch.float64)
        x[:, 0] = r
        ys = {}
        for k in cfg["monomials"]:
            R = fg.nngp.ricci_scalar(x, f"z^{k}", sw, sb)
            ys[f"k={k}"] = R
            i = int(torch.nan_to_num(R, nan=float("inf")).argmin())
            out[f"d{d}_sb{sb:g}_k{k}"] = {
                "radius": r.tolist(),
                "ricci": R.tolist(),
                "argmin_radius": float(r[i]),
                "min_ricci": float(R[i]),
            }
        keep = r >= (0.2 if sb == 0 else 0.0)  # R diverges like |x|^-2k at 0 when sigma_b = 0
        fg.plot.curves(
            r[keep],
            {k: v[keep] for k, v in ys.items()},
            ax,
            xlabel="|x|",
            ylabel="Ricci scalar R",
            title=f"monomials z^k, d={d}, sigma_w={sw:g}, sigma_b={sb:g}",
        )
        if sb > 0:
            ax.axvline(K2_XSTAR * sb / sw, color="k", ls=":", lw=0.8)
            ax.text(K2_XSTAR * sb / sw, ax.get_ylim()[0], " k=2 minimum (MATH 4.4)", fontsize=7, va="bottom")
        else:
            ax.set_yscale("symlog", linthresh=1e-2)
    run.savefig(fig, "monomials")
    run.record("monomials", out)
    return out


def amari_wu(run: Run, cfg: dict) -> dict:
    import matplotlib.pyplot as plt
    from sklearn.datasets import make_moons
    from sklearn.svm import SVC

    aw = cfg["amari_wu"]
    X, y = make_moons(200, noise=0.15, random_state=cfg["seed"])
    X = (X - X.mean(0)) / X.std(0)
    svc = SVC(kernel="rbf", C=aw["svm_C"], gamma=1 / (2 * aw["s"] ** 2)).fit(X, y)
    sv = torch.as_tensor(svc.support_vectors_, dtype=torch.float64)
    grid, axis = slices.grid_2d(-2.5, 2.5, cfg["n_grid"])
    vol = fg.nngp.amari_wu_volume_element(grid, sv, aw["tau"], base="rbf", s=aw["s"])
    dec = torch.as_tensor(svc.decision_function(grid.numpy()))
    dist = torch.cdist(grid, sv).min(1).values
    near = dist < aw["tau"]
    ratio = float(vol[near].mean() / vol[~near].mean())
    fig, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
    lv = torch.log10(vol)
    fg.plot.heatmap(
        lv,
        axis,
        ax,
        margin=dec,
        vmin=float(lv.quantile(0.1)),
        vmax=float(lv.max()),
        colorbar=r"$\log_{10}$ vol (modified kernel)",
        title=f"Amari-Wu: RBF SVM (s={aw['s']}), c(x) on {len(sv)} SVs, tau={aw['tau']}\n"
        f"mean vol within tau of an SV / elsewhere = {ratio:.2f}\n(RBF base kernel alone: constant vol; "
        f"colours clipped at the 10th percentile)",
    )
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=8, alpha=0.6)
    ax.scatter(sv[:, 0], sv[:, 1], facecolors="none", edgecolors="k", s=30, lw=0.8, label="support vectors")
    ax.legend(fontsize=7, loc="lower left")
    run.savefig(fig, "amari_wu")
    rec = {
        "n_support_vectors": len(sv),
        "near_sv_volume_ratio": ratio,
        "log10vol": torch.log10(vol).tolist(),
        "decision": dec.tolist(),
        "support_vectors": sv.tolist(),
        "train_accuracy": float(svc.score(X, y)),
    }
    run.record("amari_wu", rec)
    return rec


def main(argv=None) -> dict:
    p = parser("infinite_width", __doc__)
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration (used by the tests)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config(args)
    run = Run("infinite_width", args, cfg)
    res = convergence(run, cfg)
    convergence_figures(run, cfg, res)
    mono = monomials(run, cfg)
    aw = amari_wu(run, cfg)
    run.summary(
        errors={
            act: {
                str(n): {"vol": res[(act, n)]["vol_rel_error"], "ricci": res[(act, n)]["ricci_error"]}
                for n in cfg["widths"]
            }
            for act in cfg["activations"]
        },
        monomial_k2_d2_argmin_radius=mono["d2_sb1_k2"]["argmin_radius"],
        monomial_k2_d2_argmin_expected=K2_XSTAR * 1.0 / cfg["sigma_w"],
        amari_wu_near_sv_volume_ratio=aw["near_sv_volume_ratio"],
    )
    print(f"wrote {run.out}/results.json", file=sys.stderr)
    return run.results


if __name__ == "__main__":
    main()
