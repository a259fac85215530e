"""Cost/accuracy curve of ``method="randomized"`` along a straight interpolation path (issue 4).

Issue 4's target: log-volume *differences* along a 64-point interpolation path within 0.1 nat of
exact at <= 1/4 of the exact passes on ResNet-50, and the top-32 singular values within 1e-3
relative at <= 1/8 of the passes. This script measures the curve and says whether the target is met.

Path: x(t) = (1 - t) x_a + t x_b, t = linspace(0, 1, P) (``fastgeom.slices.path``), x_a, x_b
two N(0, 1) images (``--seed``). Model: the CIFAR-style GELU ResNet of bench/logvol.py
(random init with BatchNorm statistics from N(0, 1) inputs, or ``--checkpoint``); network in float32
unless ``--dtype float64``, accumulation in float64 throughout.

Exact reference: ``fastgeom.logvol(method="streamed")`` and ``fastgeom.spectrum(method="streamed", k=K)``
(K = min(k, n), n = min(d_in, d_out)). Randomized sweep, every point of the path with one seed:

- log-det: a (probes, Golub-Kahan steps) grid with ``common_random_numbers=True`` (default: 2, 4, 8
  probes at about 1/16, 1/8, 1/4, 1/2, 1 of the exact passes; up to 1/2 with ``--full``). Columns: max over the path of
  |(r_i - r_0) - (e_i - e_0)| (the difference error the target is about), the same between
  neighbouring points, max and mean |r_i - e_i|, mean stderr, coverage = share of points with
  |r_i - e_i| <= 2 stderr_i;
- top-K spectrum: an (oversample, iters) grid of block Krylov (default 8, 16, 32 x 1, 2, 3), on
  ``--spectrum-points`` evenly spaced points of the path (the exact spectrum adds a Jacobi SVD,
  slow for large n); max over points and the K values of |s_r - s_e| / s_e.

Cost: passes per point, one forward plus the library's ``passes_logvol`` / ``passes_spectrum``,
as a fraction of exact's 1 + n; and wall time per point as a fraction of the exact method's own
time (logvol vs exact logvol, spectrum vs exact spectrum), measured in the same run: the path is cut
into ``--groups`` contiguous groups, every method times each group, the table gives the median of
(group time / group size). Budgets run cheapest first; under ``--max-seconds`` the log-det budgets
not started by 0.6 of it and the spectrum work not started by it are skipped and marked so.

    python bench/randomized_path.py --quick   # CPU: ResNet-18 on 8x8, 16 points, a few minutes
    python bench/randomized_path.py --full    # GPU: ResNet-50 on 32x32, 64 points (issue 4's setting)
    python bench/randomized_path.py --arch resnet50 --size 16 --points 8 --label medium   # overrides
    python bench/randomized_path.py --render out/randomized_path_full.json   # table + figure from a saved run

Writes JSON (``--json``, default bench/data/randomized_path_<label>.json), a figure of error against
pass fraction with the target lines (``--fig``, default bench/img/randomized_path_<label>.png) and the
``randomized_path`` section of bench/RESULTS.md (``randomized_path_<label>`` for other labels;
``--no-write`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

LOGVOL_TARGET = (0.1, 1 / 4)  # (nat, pass fraction)
SPECTRUM_TARGET = (1e-3, 1 / 8)  # (relative error, pass fraction)


# ----------------------------------------------------------------------------------------------
# inputs and budgets
def path_points(shape: tuple[int, ...], points: int, seed: int = 0) -> torch.Tensor:
    """(points, *shape): the straight path between two N(0, 1) inputs drawn with ``seed``, both ends included."""
    from fastgeom.slices import path

    if points < 2:
        raise ValueError(f"a path needs at least 2 points, got --points {points}")
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(2, *shape, generator=g)
    return path(xa, xb, points, include_end=True)


FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def logvol_budgets(n: int, probes=(2, 4, 8), fractions=FRACTIONS) -> list[tuple[int, int]]:
    """(probes, steps) whose 1 + passes_logvol is about ``fraction`` * (1 + n), steps in [2, n], deduplicated."""
    out = []
    for p in probes:
        for f in fractions:
            k = round(((f * (1 + n) - 1) / p + 1) / 2)
            k = max(2, min(n, k))
            if (p, k) not in out:
                out.append((p, k))
    return out


def spectrum_budgets(n: int, k: int, oversample=(8, 16, 32), iters=(1, 2, 3)) -> list[tuple[int, int]]:
    """(oversample, iters) of block Krylov, dropping those that give the same block and effective iterations."""
    from fastgeom.randomized import passes_spectrum

    out, seen = [], set()
    for o in oversample:
        for q in iters:
            b = min(n, k + o)
            key = (b, passes_spectrum(n, k, o, q))
            if key not in seen:
                seen.add(key)
                out.append((o, q))
    return out


# ----------------------------------------------------------------------------------------------
# measurement
def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def timed_groups(fn, xs: torch.Tensor, groups: int):
    """Run ``fn`` on contiguous groups of xs (P, ...); returns (outputs concatenated along dim 0 (tuples
    elementwise), median over groups of seconds per point)."""
    outs, per_point = [], []
    for xg in torch.tensor_split(xs, min(groups, xs.shape[0])):
        _sync(xs)
        t0 = time.perf_counter()
        o = fn(xg)
        _sync(xs)
        per_point.append((time.perf_counter() - t0) / xg.shape[0])
        outs.append(o)
    if isinstance(outs[0], tuple):
        cat = tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    else:
        cat = torch.cat(outs)
    return cat, statistics.median(per_point)


def logvol_errors(r: torch.Tensor, se: torch.Tensor, e: torch.Tensor) -> dict:
    """Errors of randomized log volumes r (P,) with stderr se (P,) against exact e (P,) along a path:
    ``diff_err`` to the start point (the target's), ``step_err`` between neighbouring points."""
    d = (r - r[0]) - (e - e[0])
    a = (r - e).abs()
    return {
        "diff_err": float(d.abs().max()),
        "step_err": float(d.diff().abs().max()) if len(d) > 1 else 0.0,
        "abs_err_max": float(a.max()),
        "abs_err_mean": float(a.mean()),
        "stderr_mean": float(se.mean()),
        "coverage": float((a <= 2 * se).double().mean()),
    }


def spectrum_errors(sr: torch.Tensor, se: torch.Tensor) -> dict:
    """Relative errors of randomized top-K values sr (P, K) against exact se (P, K)."""
    rel = (sr - se).abs() / se
    per_point = rel.max(1).values
    return {
        "rel_err_max": float(per_point.max()),
        "rel_err_median": float(per_point.median()),
        "rel_err_per_point": per_point.tolist(),
    }


def run_curve(
    model,
    xs: torch.Tensor,
    *,
    k: int = 32,
    logvol_grid=None,
    spectrum_grid=None,
    seed: int = 0,
    logvol_fractions=FRACTIONS,
    groups: int = 4,
    spectrum_points: int | None = None,
    max_seconds: float | None = None,
    logvol_share: float = 0.6,
    progress: bool | None = None,
    checkpoint=None,
) -> dict:
    """Exact reference and the randomized sweep on the path xs (P, *input_shape) of ``model``.

    Two phases. Log-det: exact ``streamed`` logvol of every point, then ``logvol_grid`` [(probes, steps)]
    cheapest first. Spectrum: exact top-K of ``spectrum_points`` evenly spaced path points (default all;
    the exact spectrum adds a Jacobi SVD, slow for large n), then ``spectrum_grid`` [(oversample, iters)]
    cheapest first (the exact spectrum is skipped when the grid is empty). Grids default to
    ``logvol_budgets(n, fractions=logvol_fractions)`` / ``spectrum_budgets(n, k)``. With ``max_seconds``,
    log-det budgets not started by ``logvol_share * max_seconds`` and spectrum work not started by
    ``max_seconds`` are marked skipped. ``checkpoint(result)`` runs after every step (partial results
    survive a kill). Returns a JSON-able dict: ``config``, ``exact`` (values, top-K spectra, seconds per
    point, passes 1 + n), ``logvol`` / ``spectrum`` rows (budget, passes, pass_frac, time, time_frac,
    errors, ``status``) and ``targets`` (see ``targets``).
    """
    import fastgeom as fg
    from fastgeom.features import FeatureMap
    from fastgeom.randomized import passes_logvol, passes_spectrum

    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int (path groups timed separately), got {groups!r}")
    t_start = time.perf_counter()
    P = xs.shape[0]
    with torch.no_grad():
        d_out = FeatureMap(model)(xs[:1]).reshape(1, -1).shape[1]
    d_in = xs[0].numel()
    n = min(d_in, d_out)
    K = min(k, n)
    S = P if spectrum_points is None else max(1, min(P, spectrum_points))
    sidx = torch.linspace(0, P - 1, S).round().long().unique()
    exact_passes = 1 + n
    logvol_grid = list(logvol_grid if logvol_grid is not None else logvol_budgets(n, fractions=logvol_fractions))
    spectrum_grid = list(spectrum_grid if spectrum_grid is not None else spectrum_budgets(n, K))
    show = sys.stderr.isatty() if progress is None else bool(progress)

    def past(share: float) -> bool:
        return max_seconds is not None and time.perf_counter() - t_start > share * max_seconds

    def save():
        res["targets"] = targets(res)
        res["seconds"] = time.perf_counter() - t_start
        if checkpoint is not None:
            checkpoint(res)

    res = {
        "config": {
            "points": P,
            "d_in": d_in,
            "d_out": d_out,
            "n": n,
            "k": K,
            "seed": seed,
            "groups": groups,
            "spectrum_points": sidx.tolist(),
            "device": str(xs.device),
            "network_dtype": str(next(model.parameters()).dtype),
        },
        "exact": {"passes": exact_passes},
        "logvol": [],
        "spectrum": [],
    }

    if xs.is_cuda:  # warm-up on one point (allocator, cuDNN / kernel selection), not timed
        fg.logvol(model, xs[:1], method="streamed", progress=False)
        fg.logvol(model, xs[:1], method="randomized", seed=seed, options={"probes": 2, "steps": 2}, progress=False)
    e, t_lv = timed_groups(lambda xg: fg.logvol(model, xg, method="streamed", progress=False), xs, groups)
    res["exact"].update(logvol=e.tolist(), time_logvol=t_lv)
    save()

    phases = (("logvol", logvol_grid, logvol_share), ("spectrum", spectrum_grid, 1.0))
    for kind, grid, share in phases:
        if kind == "logvol":
            jobs = sorted((1 + passes_logvol(n, *b), b) for b in grid)
        else:
            jobs = sorted((1 + passes_spectrum(n, K, *b), b) for b in grid)
            if not jobs:
                res["exact"]["spectrum_status"] = "not run (no spectrum budgets)"
            elif past(share):
                res["exact"]["spectrum_status"] = "skipped (time budget)"
            else:
                xsp = xs[sidx]
                s_e, t_sp = timed_groups(
                    lambda xg: fg.spectrum(model, xg, method="streamed", k=K, progress=False), xsp, groups
                )
                res["exact"].update(spectrum=s_e.tolist(), time_spectrum=t_sp, spectrum_status="ok")
                save()
        for passes, b in tqdm(jobs, desc=f"randomized {kind} budgets", disable=not show):
            row = {"passes": passes, "pass_frac": passes / exact_passes}
            if kind == "logvol":
                row.update(probes=b[0], steps=min(b[1], n))
            else:
                row.update(oversample=b[0], iters=b[1], block=min(n, K + b[0]))
            if past(share) or res["exact"].get("spectrum_status", "ok") != "ok":
                row["status"] = f"skipped (time budget {max_seconds:g} s)"
                res[kind].append(row)
                continue
            if kind == "logvol":
                opts = {"probes": b[0], "steps": b[1], "common_random_numbers": True}
                (r, se), t = timed_groups(
                    lambda xg: fg.logvol(
                        model, xg, method="randomized", return_stderr=True, seed=seed, options=opts, progress=False
                    ),
                    xs,
                    groups,
                )
                row.update(time=t, time_frac=t / t_lv, values=r.tolist(), stderr=se.tolist(), **logvol_errors(r, se, e))
            else:
                opts = {"oversample": b[0], "iters": b[1]}
                s_r, t = timed_groups(
                    lambda xg: fg.spectrum(
                        model, xg, k=K, method="randomized", seed=seed, options=opts, progress=False
                    ),
                    xsp,
                    groups,
                )
                row.update(time=t, time_frac=t / t_sp, **spectrum_errors(s_r, s_e))
            row["status"] = "ok"
            res[kind].append(row)
            save()
    save()
    return res


def targets(res: dict) -> dict:
    """Per target: met (some budget within the pass fraction reaches the error), the best error within
    the fraction, the smallest measured pass fraction reaching the error (None if none did), and how many
    budgets within the fraction were planned and measured."""
    out = {}
    for kind, key, (tol, frac) in (("logvol", "diff_err", LOGVOL_TARGET), ("spectrum", "rel_err_max", SPECTRUM_TARGET)):
        ok = [r for r in res[kind] if r.get("status") == "ok"]
        within = [r[key] for r in ok if r["pass_frac"] <= frac]
        reach = [r["pass_frac"] for r in ok if r[key] <= tol]
        top = max(ok, key=lambda r: r["pass_frac"], default=None)
        out[kind] = {
            "error": key,
            "tol": tol,
            "max_pass_frac": frac,
            "measured_within": len(within),
            "planned_within": sum(r["pass_frac"] <= frac for r in res[kind]),
            "planned": len(res[kind]),
            "best_within": min(within) if within else None,
            "met": bool(within) and min(within) <= tol,
            "min_frac_reaching_tol": min(reach) if reach else None,
            "largest_frac": top["pass_frac"] if top else None,
            "error_at_largest": top[key] if top else None,
        }
    return out


# ----------------------------------------------------------------------------------------------
# report
def _f(v, fmt=".3g"):
    return "n/a" if v is None else format(v, fmt)


def verdict(t: dict, what: str, unit: str, floor: float | None = None) -> str:
    """One line: is the target met; ``floor`` = the smallest pass fraction the method can use at all."""
    tol = f"{t['tol']:g}{' nat' if unit == 'nat' else ' relative'}"
    head = f"{what} (<= {tol} at <= {t['max_pass_frac']:.3g} of the passes): "
    if t["measured_within"] == 0:
        if not t.get("planned", 1):
            return head + "**NOT MEASURED** — no budgets in this run"
        if t["planned_within"]:
            why = "the budgets within that fraction were skipped (time budget)"
        elif floor is not None and floor > t["max_pass_frac"]:
            why = f"impossible at this size: the cheapest possible budget needs {floor:.3g} of the passes"
        else:
            why = "no budget within that fraction in the grid"
        return head + f"**NOT MEASURED** — {why}"
    reach = (
        f"no measured budget reaches the error, up to the largest ({t['largest_frac']:.3g} of the passes, "
        f"error {_f(t['error_at_largest'])})"
        if t["min_frac_reaching_tol"] is None
        else f"the cheapest measured budget reaching the error uses {t['min_frac_reaching_tol']:.3g} of the passes"
    )
    return head + (
        f"**{'MET' if t['met'] else 'NOT MET'}** here — best error within that fraction {_f(t['best_within'])}; {reach}"
    )


def markdown(res: dict, cmd: str, device: str, model_desc: str, fig: str | None) -> str:
    """The RESULTS.md section: setting, target verdicts, the two tables."""
    from fastgeom.randomized import passes_spectrum

    c, ex, tg = res["config"], res["exact"], res["targets"]
    e = ex["logvol"]
    sp = (
        f"streamed spectrum (top {c['k']}, on {len(c['spectrum_points'])} of the points) "
        f"{ex['time_spectrum']:.3g} s / point"
        if ex.get("spectrum_status") == "ok"
        else f"exact spectrum {ex.get('spectrum_status', 'not run')}"
    )
    lines = [
        f"`{cmd}` — {device}",
        "",
        f"{model_desc}; straight path of {c['points']} points between two N(0, 1) inputs; d_in = {c['d_in']}, "
        f"d_out = {c['d_out']}, n = {c['n']}; exact = 1 + n = {ex['passes']} passes per point, "
        f"streamed logvol {ex['time_logvol']:.3g} s / point, {sp}. Exact log volume along the path: "
        f"{min(e):.1f} to {max(e):.1f} nat (largest step between neighbours "
        f"{max(abs(b - a) for a, b in zip(e, e[1:])):.3g} nat). Run time {res['seconds']:.0f} s.",
        "",
        "- " + verdict(tg["logvol"], "Log-det differences along the path", "nat"),
        "- "
        + verdict(
            tg["spectrum"],
            f"Top-{c['k']} singular values",
            "rel",
            (1 + passes_spectrum(c["n"], c["k"], 0, 1)) / ex["passes"],
        ),
        "",
        "Log-det: SLQ with common random numbers (probes x Golub-Kahan steps). diff error = max_i "
        "|(r_i - r_0) - (e_i - e_0)| (differences to the path's start, the target's measure); neighbour "
        "error = the same for consecutive points; coverage = share of points with |r_i - e_i| <= 2 stderr. "
        "The difference error has two parts: Gauss-quadrature bias (falls with steps, largely shared by "
        "neighbouring points) and Hutchinson probe noise (falls as 1/sqrt(probes); common random numbers "
        "cancel it only where log(K^T K) barely changes between the two points).",
        "",
        "| probes x steps | passes / point | pass fraction | time fraction | diff error (nat) | neighbour error | "
        "max abs error | mean abs error | mean stderr | coverage |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["logvol"]:
        b = f"{r['probes']} x {r['steps']}"
        if r["status"] != "ok":
            lines.append(f"| {b} | {r['passes']} | {r['pass_frac']:.3f} | {r['status']} | | | | | | |")
            continue
        lines.append(
            f"| {b} | {r['passes']} | {r['pass_frac']:.3f} | {r['time_frac']:.3f} | {r['diff_err']:.3g} | "
            f"{r['step_err']:.3g} | {r['abs_err_max']:.3g} | {r['abs_err_mean']:.3g} | "
            f"{r['stderr_mean']:.3g} | {r['coverage']:.0%} |"
        )
    if not res["spectrum"]:
        lines += ["", "Top-k spectrum: not run (no spectrum budgets)."]
    else:
        lines += [
            "",
            f"Top-{c['k']} spectrum: randomized block Krylov, block = k + oversample, q = iters; error = max "
            f"over points and the {c['k']} values of |s_r - s_e| / s_e.",
            "",
            "| oversample x iters | block | passes / point | pass fraction | time fraction | max rel error | "
            "median (over points) of max rel error |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["spectrum"]:
            b = f"{r['oversample']} x {r['iters']}"
            if r["status"] != "ok":
                lines.append(f"| {b} | {r['block']} | {r['passes']} | {r['pass_frac']:.3f} | {r['status']} | | |")
                continue
            lines.append(
                f"| {b} | {r['block']} | {r['passes']} | {r['pass_frac']:.3f} | {r['time_frac']:.3f} | "
                f"{r['rel_err_max']:.3g} | {r['rel_err_median']:.3g} |"
            )
    lines += [
        "",
        "Pass fraction = (1 + randomized passes) / (1 + n), one pass = one JVP or VJP of one vector at one "
        "point, the 1 = the forward pass. Time fraction = median seconds per point / the exact method's "
        f"(logvol vs streamed logvol, spectrum vs streamed spectrum, which includes a Jacobi SVD), each the "
        f"median over {c['groups']} groups of the path measured in this run; each call gets a group, so "
        "randomized steps batch (points in the group) x (probes or block) vectors.",
    ]
    if fig:
        lines += ["", f"![error vs pass fraction]({os.path.relpath(fig, HERE)})"]
    return "\n".join(lines)


def model_description(meta: dict) -> str:
    ck = meta.get("checkpoint")
    return (
        f"**{meta['arch']}** (GELU, {'checkpoint ' + ck if ck else 'random init'}, {meta['dtype']} network, "
        f"float64 accumulation), input 3x{meta['size']}x{meta['size']}"
    )


def figure(res: dict, path: str, title: str) -> None:
    """Error against pass fraction: log-det difference error per probe count, spectrum error per oversample,
    with the target box of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), constrained_layout=True)
    panels = (
        ("logvol", "probes", "diff_err", "steps", LOGVOL_TARGET, "max |Δ log vol error| along path (nat)"),
        (
            "spectrum",
            "oversample",
            "rel_err_max",
            "iters",
            SPECTRUM_TARGET,
            f"max rel. error, top-{res['config']['k']} singular values",
        ),
    )
    for ax, (kind, group, key, lab, (tol, frac), ylabel) in zip(axes, panels):
        rows = [r for r in res[kind] if r.get("status") == "ok"]
        if not rows:
            ax.text(0.5, 0.5, "not measured in this run", transform=ax.transAxes, ha="center", fontsize=9)
        for i, g in enumerate(sorted({r[group] for r in rows})):
            rs = sorted((r for r in rows if r[group] == g), key=lambda r: r["pass_frac"])
            xs, ys = [r["pass_frac"] for r in rs], [max(r[key], 1e-16) for r in rs]
            ax.plot(xs, ys, "o-", color=plt.get_cmap("viridis")(i / 3), label=f"{group} {g}")
            for r, x, y in zip(rs, xs, ys):
                ax.annotate(f"{lab[0]}{r[lab]}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if kind == "logvol" and rows:
            ax.plot(
                [r["pass_frac"] for r in rows],
                [r["abs_err_mean"] for r in rows],
                "x",
                color="0.6",
                label="mean |abs error|",
            )
            ax.plot(
                [r["pass_frac"] for r in rows],
                [max(r["step_err"], 1e-16) for r in rows],
                "+",
                color="tab:orange",
                label="neighbour error",
            )
        ax.axhline(tol, color="crimson", ls="--", lw=1)
        ax.axvline(frac, color="crimson", ls="--", lw=1)
        x_lo = min([r["pass_frac"] for r in rows] + [frac]) / 2
        ax.fill_between(
            [x_lo, frac],
            1e-16,
            tol,
            color="crimson",
            alpha=0.08,
            label=f"target: <= {tol:g} at <= {frac:g} of the passes",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("passes per point / exact (1 + n)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
        ys_all = [max(r[key], 1e-16) for r in rows] + [tol]
        if kind == "logvol":
            ys_all += [max(r["step_err"], 1e-16) for r in rows] + [r["abs_err_mean"] for r in rows]
        ax.set_ylim(min(ys_all) / 3, max(ys_all) * 3)
        ax.set_xlim(x_lo, max([r["pass_frac"] for r in rows] + [1.0]) * 1.5)
    fig.suptitle(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
def _budget_list(items, name):
    out = []
    for s in items:
        try:
            a, b = (int(v) for v in s.lower().split("x"))
        except ValueError:
            raise SystemExit(f"{name}: budgets are AxB with integers (e.g. 4x16), got {s!r}") from None
        out.append((a, b))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU: ResNet-18, 8x8 inputs, 16 points (default)")
    g.add_argument("--full", action="store_true", help="GPU: ResNet-50, 32x32 inputs, 64 points")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--size", type=int, default=None, help="input height = width")
    ap.add_argument("--points", type=int, default=None, help="path points")
    ap.add_argument("--k", type=int, default=32, help="top-k singular values (capped at n)")
    ap.add_argument("--logvol-budgets", nargs="*", default=None, help="probes x steps, e.g. 4x16 8x32")
    ap.add_argument("--spectrum-budgets", nargs="*", default=None, help="oversample x iters, e.g. 8x2")
    ap.add_argument("--groups", type=int, default=4, help="path groups timed separately (medians)")
    ap.add_argument(
        "--spectrum-points",
        type=int,
        default=None,
        help="evenly spaced path points for the spectra (default: all; 8 with --full)",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="time budget: log-det budgets not started by 0.6 of it, spectrum work not started by it, are skipped",
    )
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--label", default=None, help="names the JSON, figure and RESULTS.md section")
    ap.add_argument("--json", default=None)
    ap.add_argument("--fig", default=None)
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="only redo the figure and RESULTS.md section from a saved JSON (e.g. a GPU run's)",
    )
    args = ap.parse_args(argv)

    full = args.full
    label = args.label or ("full" if full else "quick")
    dev = torch.device(args.device or ("cuda" if full else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--full needs a CUDA device (none visible); use --quick on CPU, or --device cpu with overrides")
    if args.threads or not full:
        torch.set_num_threads(args.threads or 1)
    arch = args.arch or ("resnet50" if full else "resnet18")
    size = args.size or (32 if full else 8)
    npts = args.points or (64 if full else 16)
    jpath = args.json or os.path.join(HERE, "data", f"randomized_path_{label}.json")
    fpath = args.fig or os.path.join(HERE, "img", f"randomized_path_{label}.png")

    from _results import device_line, write_section

    section = "randomized_path" + ("" if label == "quick" else f"_{label}")

    def publish(res, meta, final=True):
        """Figure and RESULTS.md section from a result and its meta; returns the markdown body."""
        fig = fpath
        title = (
            f"randomized vs exact: {meta['arch']}, 3x{meta['size']}x{meta['size']}, "
            f"{res['config']['points']}-point path ({res['config']['device']}), n = {res['config']['n']}"
        )
        figure(res, fig, title)
        body = markdown(
            res,
            "python bench/randomized_path.py " + " ".join(meta["argv"]),
            meta["device"],
            model_description(meta),
            fig,
        )
        if not final:
            body = "**Partial run** (interrupted before the end; what was measured so far):\n\n" + body
        if not args.no_write:
            write_section(
                section,
                f"## Randomized cost/accuracy along a path (`bench/randomized_path.py`, {meta['label']})\n\n" + body,
            )
        return body

    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        meta = saved.pop("meta")
        section = "randomized_path" + ("" if meta["label"] == "quick" else f"_{meta['label']}")
        fpath = args.fig or os.path.join(HERE, "img", f"randomized_path_{meta['label']}.png")
        saved["targets"] = targets(saved)
        print(publish(saved, meta, final=meta.get("finished", True)))
        return

    from logvol import build_model

    device = device_line()
    model = build_model(arch, args.checkpoint).to(dev, getattr(torch, args.dtype))
    xs = path_points((3, size, size), npts, args.seed).to(dev, getattr(torch, args.dtype))
    lg = _budget_list(args.logvol_budgets, "--logvol-budgets") if args.logvol_budgets is not None else None
    sg = _budget_list(args.spectrum_budgets, "--spectrum-budgets") if args.spectrum_budgets is not None else None
    spts = args.spectrum_points or (8 if full else None)
    fracs = FRACTIONS[:-1] if full else FRACTIONS  # GPU time: up to 1/2 of the exact passes
    meta = {
        "arch": arch,
        "size": size,
        "dtype": args.dtype,
        "checkpoint": args.checkpoint,
        "device": device,
        "label": label,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }

    def dump(res, final=False):
        """JSON, figure and RESULTS.md section; called after every step, so partial runs keep their results."""
        os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
        with open(jpath, "w") as f:
            json.dump(dict(res, meta=dict(meta, finished=final)), f, indent=1)
        if res["logvol"] or res["spectrum"]:
            return publish(res, meta, final)
        return None

    print(f"[randomized_path] {arch} {size}x{size}, {npts} points on {dev} ...", file=sys.stderr, flush=True)
    res = run_curve(
        model,
        xs,
        k=args.k,
        logvol_grid=lg,
        spectrum_grid=sg,
        seed=args.seed,
        groups=args.groups,
        logvol_fractions=fracs,
        spectrum_points=spts,
        max_seconds=args.max_seconds,
        progress=True,
        checkpoint=dump,
    )
    print(dump(res, final=True) or json.dumps(res["targets"]))


if __name__ == "__main__":
    main()
