"""Curvature by Gauss's equation (fastgeom.surfaces): cost per point and error, side by side.

Part 1, small models, float64: ``scalar_curvature`` of deep tanh MLP immersions (d_in = 2, 4, 8) and
``gaussian_curvature`` on a plane through a small CNN, against the brute-force oracle
(``fastgeom.curvature``: metric by autograd, its first and second derivatives by jacfwd, Christoffels,
Riemann) and a naive per-point Gauss equation (Hessian of phi by nested jacfwd, one point at a time).
Error = max relative difference to the oracle (the oracle agrees with the closed forms to ~1e-10 in
tests/test_surfaces.py, so equal accuracy means a difference at that level). The fast route is timed three
ways: the nested-JVP route (``jet=False``), the functional API (a fresh handle per call: the jet route, with
its trace and first-point check, from ``geometry.JET_MIN_POINTS`` points per call, nested JVPs below) and a
``Geometry`` handle in repeated use (it holds the checked jet); at 16 and 256 points per call (``--points``).

Part 2, a CIFAR ResNet (GELU, float32 as trained): ``gaussian_curvature`` over a plane grid of the
paper's kind (x0 + a u + b v) against ``logvol`` per point at the same points (the model output; logvol
over a subset of the grid, per point). Targets (issue 12): scalar curvature of a d_in = 8 immersion >= 20x
faster than brute force at equal accuracy; ResNet-34 32x32, 64x64 plane: gaussian_curvature <= 1/10 of logvol.

    python bench/curvature.py --quick     # CPU: part 1 + ResNet-18 width 8 at 16x16, 8x8 plane (a few minutes)
    python bench/curvature.py --full      # GPU: part 1 + ResNet-34 at 32x32, 64x64 plane
    python bench/curvature.py --full --device cpu --skip-small --grid 4 --logvol-points 2 --repeat 1
                                          # the ResNet-34 ratio on CPU over a 4x4 plane (about 2 minutes)

Writes JSON (``--json``, default bench/out/curvature.json) and the ``curvature`` (or ``curvature_full_<device>``)
section of bench/RESULTS.md (``--no-write`` to skip).
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
from torch import nn  # noqa: E402
from torch.func import jacfwd  # noqa: E402

import fastgeom as fg  # noqa: E402
from fastgeom import curvature as cv  # noqa: E402
from fastgeom import (
    geometry,  # noqa: E402
    surfaces,  # noqa: E402
)
from fastgeom.features import FeatureMap  # noqa: E402

D64 = torch.float64


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fns, dev, repeat=3):
    """[(median seconds, last result)] of each callable in `fns`, after one warm-up each, over `repeat`
    interleaved rounds (a load change on a shared machine hits every method alike). On CPU the seconds are
    the process's CPU time (all its threads), which other processes on a shared machine do not inflate."""
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    outs = [f() for f in fns]
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for k, f in enumerate(fns):
            sync(dev)
            t = clock()
            outs[k] = f()
            sync(dev)
            ts[k].append(clock() - t)
    return [(statistics.median(t), o) for t, o in zip(ts, outs)]


def mlp(d, dev, width=32):
    torch.manual_seed(d)
    return nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2 * d + 3)
    ).to(dev, D64)


def small_cnn(dev):
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.GELU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(8 * 5 * 5, 24),
        )
        .to(dev, D64)
        .eval()
    )


def brute_R(fmap, x):
    def metric(y):
        J = jacfwd(lambda z: fmap(z[None])[0])(y)
        return J.T @ J

    return cv.ricci_scalar(metric, x)


def naive_R(fmap, x):
    """Per point: H = jacfwd(jacfwd(phi)) (n, d, d), J = jacfwd(phi), Gauss equation in float64."""
    out = []
    for xi in x:
        f = lambda z: fmap(z[None])[0]  # noqa: E731
        J, H = jacfwd(f)(xi), jacfwd(jacfwd(f))(xi)
        Q, R = torch.linalg.qr(J)
        N = H - torch.einsum("nk,mk,mab->nab", Q, Q, H)
        Ri = torch.linalg.inv(R)
        Nt = torch.einsum("ai,bj,nab->ijn", Ri, Ri, N)
        out.append((Nt.diagonal(dim1=0, dim2=1).sum(-1) ** 2).sum() - (Nt**2).sum())
    return torch.stack(out)


def plane_map(fmap, x, u, v):
    return lambda ab: fmap((x + ab[0] * u + ab[1] * v)[None])[0]


def brute_K(fmap, x, u, v):
    out = []
    for i in range(x.shape[0]):
        f = plane_map(fmap, x[i], u, v)

        def metric(ab, f=f):
            J = jacfwd(f)(ab)
            return J.T @ J

        out.append(cv.ricci_scalar(metric, x.new_zeros(1, 2))[0] / 2)
    return torch.stack(out)


def naive_K(fmap, x, u, v):
    out = []
    for i in range(x.shape[0]):
        f = plane_map(fmap, x[i], u, v)
        ab = x.new_zeros(2)
        T, H = jacfwd(f)(ab), jacfwd(jacfwd(f))(ab)
        Q, R = torch.linalg.qr(T)
        N = H - torch.einsum("nk,mk,mab->nab", Q, Q, H)
        out.append(((N[:, 0, 0] * N[:, 1, 1]).sum() - (N[:, 0, 1] ** 2).sum()) / (R[0, 0] * R[1, 1]) ** 2)
    return torch.stack(out)


def rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


def _row(case, points, times, outs, ref_index=0):
    """times/outs of (brute, naive, nested, fast, handle), seconds per point and errors against brute force."""
    names = ("brute", "naive", "nested", "fast", "handle")
    row = {"case": case, "points": points}
    row.update({f"{n}_s": t / points for n, t in zip(names, times)})
    row.update({f"err_{n}": rel(o, outs[ref_index]) for n, o in zip(names[1:], outs[1:])})
    print(row, flush=True)
    return row


def _used_handle(net, x, call):
    """A ``Geometry`` handle that has already computed JET_MIN_POINTS points shaped like x (so it holds the
    validated jet, as any handle in repeated use does)."""
    g = fg.Geometry(net)
    reps = -(-geometry.JET_MIN_POINTS // x.shape[0])
    call(g, x.repeat(reps, *([1] * (x.dim() - 1))))
    return g


def part_small(dev, points, repeat):
    """brute force, naive Gauss, the nested-JVP route (``jet=False``, fmap level), ``fg.scalar_curvature``
    (functional: probe every call; the jet's trace and check too when the call has >= JET_MIN_POINTS points,
    else nested JVPs) and a used ``Geometry`` handle (``_used_handle``), interleaved."""
    rows = []
    for d, width in ((2, 32), (4, 32), (8, 32), (8, 256)):
        net = mlp(d, dev, width)
        x = torch.randn(points, d, dtype=D64, device=dev)
        fmap = FeatureMap(net)
        g = _used_handle(net, x, lambda h, y: h.scalar_curvature(y, progress=False))
        res = timed(
            [
                lambda: brute_R(fmap, x),
                lambda: naive_R(fmap, x),
                lambda: surfaces.scalar_curvature_fmap(fmap, x, jet=False),
                lambda: fg.scalar_curvature(net, x, progress=False),
                lambda: g.scalar_curvature(x, progress=False),
            ],
            dev,
            repeat,
        )
        case = f"scalar_curvature, tanh MLP {d}-{width}-{width}-{2 * d + 3}"
        rows.append(_row(case, points, [t for t, _ in res], [o for _, o in res]))
    net = small_cnn(dev)
    x = torch.randn(points, 3, 13, 13, dtype=D64, device=dev)
    u, v = torch.randn(3, 13, 13, dtype=D64, device=dev), torch.randn(3, 13, 13, dtype=D64, device=dev)
    fmap = FeatureMap(net)
    g = _used_handle(net, x, lambda h, y: h.gaussian_curvature(y, u, v, progress=False))
    res = timed(
        [
            lambda: brute_K(fmap, x, u, v),
            lambda: naive_K(fmap, x, u, v),
            lambda: surfaces.gaussian_curvature_fmap(fmap, x, u, v, jet=False),
            lambda: fg.gaussian_curvature(net, x, u, v, progress=False),
            lambda: g.gaussian_curvature(x, u, v, progress=False),
        ],
        dev,
        repeat,
    )
    case = "gaussian_curvature, GELU CNN 3x13x13 -> 24, plane"
    rows.append(_row(case, points, [t for t, _ in res], [o for _, o in res]))
    return rows


def part_resnet(dev, arch, width, size, grid, lv_points, repeat):
    from fastgeom.models import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(arch, width=width, num_classes=None).to(dev).eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, size, size, generator=g).to(dev)
    u, v = torch.randn(3, size, size, generator=g).to(dev), torch.randn(3, size, size, generator=g).to(dev)
    u, v = u / u.norm(), v / v.norm()
    a = torch.linspace(-1, 1, grid, device=dev)
    A, Bm = torch.meshgrid(a, a, indexing="ij")
    X = x0 + A.reshape(-1, 1, 1, 1) * u + Bm.reshape(-1, 1, 1, 1) * v
    n = X.shape[0]
    sub = X[torch.linspace(0, n - 1, min(lv_points, n)).long()]
    fmap = FeatureMap(model)
    (tk, K), (tl, _), (tn, Kn) = timed(
        [
            lambda: fg.gaussian_curvature(model, X, u, v, progress=False),
            lambda: fg.logvol(model, sub, progress=False),
            lambda: surfaces.gaussian_curvature_fmap(fmap, X, u, v, jet=False),
        ],
        dev,
        repeat,
    )
    # float32 vs float64 network at a few points: what float32 loses
    few = X[:4]
    K64 = fg.gaussian_curvature(model, few, u, v, dtype=D64, progress=False)
    row = {
        "case": f"{arch} width {width}, {size}x{size}, {grid}x{grid} plane (output, d_out {8 * width})",
        "points": n,
        "curv_s": tk / n,
        "nested_s": tn / n,
        "jet_vs_nested": rel(K, Kn),
        "logvol_s": tl / sub.shape[0],
        "logvol_points": sub.shape[0],
        "ratio": (tk / n) / (tl / sub.shape[0]),
        "f32_vs_f64": rel(K[:4], K64),
        "nan": int(torch.isnan(K).sum()),
    }
    print(row, flush=True)
    return row


def render(res) -> str:
    from _results import device_line

    lines = [
        f"`python bench/curvature.py {res['argv']}` — {device_line()}; "
        f"load average {res.get('load', 0):.1f} "
        "(a shared machine: ratios are measured interleaved, absolute times are not representative)",
        "",
        "Seconds per point (median of interleaved repeats; on CPU the process's CPU seconds); error = max "
        "relative difference to the brute-force oracle (float64). *naive*: Hessian of phi by nested jacfwd, "
        "one point at a time; *nested*: the nested-JVP route of fastgeom.surfaces (``jet=False``: JVPs of "
        "JVPs vmapped over directions, batched over points; fmap level, no probe); *fast*: "
        "``fg.scalar_curvature`` / ``fg.gaussian_curvature`` (a fresh handle per call: the probe, and with "
        f">= {geometry.JET_MIN_POINTS} points the jet route, a second-order forward pass through the traced "
        "graph, with its trace and first-point check; fewer points take the nested route); *handle*: a "
        "``fg.Geometry`` handle in repeated use (it has computed that many points, so it holds the checked jet).",
        "",
        "| case | points | brute s/pt | naive s/pt | nested s/pt | fast s/pt | handle s/pt | brute / fast | "
        "brute / handle | err fast | err handle | err nested | err naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not res["small"]:
        lines = lines[:2]  # --skip-small: the ResNet part only
    for r in res["small"]:
        lines.append(
            f"| {r['case']} | {r['points']} | {r['brute_s']:.2e} | {r['naive_s']:.2e} | {r['nested_s']:.2e} | "
            f"{r['fast_s']:.2e} | {r['handle_s']:.2e} | {r['brute_s'] / r['fast_s']:.1f}x | "
            f"{r['brute_s'] / r['handle_s']:.1f}x | {r['err_fast']:.1e} | {r['err_handle']:.1e} | "
            f"{r['err_nested']:.1e} | {r['err_naive']:.1e} |"
        )
    for r in res["small"]:
        if r["case"].startswith("scalar_curvature, tanh MLP 8-"):
            sf, sh = r["brute_s"] / r["fast_s"], r["brute_s"] / r["handle_s"]
            lines += [
                "",
                f"Target scalar_curvature d_in = 8 >= 20x faster than brute force, {r['case'][18:]}, "
                f"{r['points']} points: functional {sf:.1f}x ({'met' if sf >= 20 else 'NOT met'}), handle "
                f"{sh:.1f}x ({'met' if sh >= 20 else 'NOT met'}); error {r['err_fast']:.1e}, brute force's own "
                f"difference to the naive Gauss route {r['err_naive']:.1e}.",
            ]
    r = res.get("resnet")
    if r:
        lines += [
            "",
            "| ResNet case | plane points | gaussian_curvature s/pt | nested s/pt | logvol s/pt (points) | ratio | "
            "float32 vs float64 K | jet vs nested K | NaN |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {r['case']} | {r['points']} | {r['curv_s']:.2e} | {r['nested_s']:.2e} | {r['logvol_s']:.2e} "
            f"({r['logvol_points']}) | {r['ratio']:.3f} | {r['f32_vs_f64']:.1e} | {r['jet_vs_nested']:.1e} | "
            f"{r['nan']} |",
        ]
        if res["mode"] == "--full":
            lines += [
                "",
                f"Target <= 1/10 of logvol on ResNet-34 32x32 (per point, over a {r['points']}-point plane"
                f"{'' if r['points'] >= 4096 else '; the target names a 64x64 plane'}): {r['ratio']:.3f} "
                f"({'met' if r['ratio'] <= 0.1 else 'NOT met'}).",
            ]
        else:
            lines += [
                "",
                "CPU stand-in; the ResNet-34 target is measured by `--full` (section curvature_full_<device>).",
            ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU (default)")
    g.add_argument("--full", action="store_true", help="GPU, ResNet-34 32x32, 64x64 plane")
    ap.add_argument("--points", default="16,256", help="points per call for part 1 (comma-separated counts)")
    ap.add_argument("--grid", type=int, default=None)
    ap.add_argument("--logvol-points", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "curvature.json"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    full = a.full
    dev = torch.device(a.device or ("cuda" if full else "cpu"))
    res = {"mode": "--full" if full else "--quick", "argv": " ".join(argv if argv is not None else sys.argv[1:])}
    counts = [int(c) for c in str(a.points).split(",") if c]
    res["small"] = [] if a.skip_small else [r for c in counts for r in part_small(dev, c, a.repeat)]
    if full:
        res["resnet"] = part_resnet(dev, "resnet34", 64, 32, a.grid or 64, a.logvol_points or 64, a.repeat)
    else:
        res["resnet"] = part_resnet(dev, "resnet18", 8, 16, a.grid or 8, a.logvol_points or 8, a.repeat)
    res["load"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    md = render(res)
    print(md)
    if not a.no_write:
        from _results import write_section

        write_section(f"curvature_full_{dev.type}" if full else "curvature", md)


if __name__ == "__main__":
    main()
