"""Benchmark of fastgeom.shallow (issue 3 item 5): every backend against autograd baselines.

Cases: volume element and Ricci scalar on an 80x80 grid (6400 points) of 2-D sigmoid nets of width
8, 250 and 2000; log volume element of a 784 -> 2000 sigmoid net. Baselines: torch.func Jacobian
(vmap(jacfwd), the faster mode for few inputs) and determinant (vol), and brute-force curvature via
torch.func (fastgeom.curvature
on the autograd metric J^T J). Every timing is a median of ``--repeat`` runs in this one process and
comes with its max relative error against the float64 reference. Slow baselines are timed on a
subset of points and scaled linearly (the table says so).

    python bench/shallow.py            # CPU table (about 3-4 minutes on a busy 2-core machine)
    python bench/shallow.py --device cuda   # GPU table (cuda, triton, torch and the baselines)

Results go to bench/RESULTS.md (section "shallow") unless --no-write.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

sys.path.insert(
    0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
)

import fastgeom.shallow as sh  # noqa: E402
from fastgeom import activations as A  # noqa: E402
from fastgeom import curvature as cv  # noqa: E402
from fastgeom._ext import backend_usable, ext  # noqa: E402
from fastgeom.ops import shallow as op  # noqa: E402

try:
    from bench._results import device_line, write_section  # noqa: E402
except ImportError:  # run as a script from bench/
    from _results import device_line, write_section  # noqa: E402

D64 = torch.float64


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, dev, repeat, warm=None):
    (warm or fn)()  # warm-up (compilation, caches); `warm` is a cheaper call of the same code
    _sync(dev)
    ts = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def grid(n_side, dev):
    a = torch.linspace(-1.5, 1.5, n_side, dtype=D64, device=dev)
    return torch.cartesian_prod(a, a)


def phi_fn(W, b):
    n = W.shape[0]
    return lambda p: torch.sigmoid(W @ p + b) / math.sqrt(n)


def baseline_vol(W, b, x, chunk):
    f = torch.func.vmap(torch.func.jacfwd(phi_fn(W, b)))
    out = []
    for i in range(0, x.shape[0], chunk):
        J = f(x[i : i + chunk])
        out.append(torch.sqrt(torch.linalg.det(J.mT @ J)))
    return torch.cat(out)


def baseline_logvol(W, b, x, chunk):
    f = torch.func.vmap(torch.func.jacfwd(phi_fn(W, b)))
    out = []
    for i in range(0, x.shape[0], chunk):
        J = f(x[i : i + chunk])
        out.append(0.5 * torch.linalg.slogdet(J.mT @ J)[1])
    return torch.cat(out)


def baseline_ricci(W, b, x, chunk):
    J = torch.func.jacfwd(phi_fn(W, b))

    def g(p):
        j = J(p)
        return j.T @ j

    return torch.cat([cv.ricci_scalar(g, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def relerr(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


def run(dev, repeat, sub, hd_points, widths, write):
    torch.manual_seed(0)
    act = A.get("sigmoid")
    rows = []
    backends = ["torch"]
    if dev.type == "cpu" and ext.has_op("shallow_geometry"):
        backends.append("cpp")
    if dev.type == "cuda":
        if ext.with_cuda and ext.has_op("shallow_geometry"):
            backends.append("cuda")
        if backend_usable("triton")[0]:
            backends.append("triton")
    x = grid(80, dev)
    N = x.shape[0]
    for n in widths:
        W = torch.randn(n, 2, dtype=D64, device=dev)
        b = torch.randn(n, dtype=D64, device=dev)
        # slow methods (reference, autograd baselines) are timed on the first nsub points and scaled
        nsub = N if (n < 250 or dev.type == "cuda") else (sub if n < 2000 else max(4, sub // 4))
        x2 = x[:2]
        xs = x[:nsub]
        scale = N / nsub
        note = "" if nsub == N else f"timed on {nsub} points, x{scale:.0f}"
        case = f"2-D width {n}, {N} pts"
        t_ref, ref = timeit(
            lambda: op.geometry(W, b, xs, act, "torch", want=("logvol", "ricci")),
            dev,
            repeat if nsub == N else 1,
            lambda: op.geometry(W, b, x2, act, "torch", want=("logvol", "ricci")),
        )
        t_ref *= scale
        vol_ref, R_ref = torch.exp(ref["logvol"]), ref["ricci"]
        t_bv, v_b = timeit(
            lambda: baseline_vol(W, b, xs, 512), dev, max(1, repeat // 2), lambda: baseline_vol(W, b, x2, 512)
        )
        t_bv *= scale
        t_br, R_b = timeit(
            lambda: baseline_ricci(W, b, xs, 64 if n >= 2000 else 256), dev, 1, lambda: baseline_ricci(W, b, x2, 64)
        )
        t_br *= scale
        rows.append((case, "autograd vol (vmap jacfwd + det)", t_bv, relerr(v_b, vol_ref), note))
        rows.append(
            (
                case,
                "autograd Ricci (brute force, torch.func)",
                t_br,
                ((R_b - R_ref).abs() / (1 + R_ref.abs())).max().item(),
                note,
            )
        )
        rows.append(
            (
                case,
                "torch reference: volume + Ricci",
                t_ref,
                0.0,
                f"{note}; x{(t_bv + t_br) / t_ref:.1f} vs autograd vol + Ricci".lstrip("; "),
            )
        )
        for be in backends[1:]:
            t_v, v = timeit(lambda: sh.volume_element(W, b, x, "sigmoid", backend=be), dev, repeat)
            t_r, R = timeit(lambda: sh.ricci_scalar(W, b, x, "sigmoid", backend=be), dev, repeat)
            t_g, G = timeit(lambda: op.geometry(W, b, x, act, be, want=("logvol", "ricci")), dev, repeat)
            rerr = ((R[:nsub] - R_ref).abs() / (1 + R_ref.abs())).max().item()
            rows.append((case, f"{be}: volume", t_v, relerr(v[:nsub], vol_ref), f"x{t_bv / t_v:.1f} vs autograd vol"))
            rows.append((case, f"{be}: Ricci", t_r, rerr, f"x{t_br / t_r:.1f} vs autograd Ricci"))
            rows.append(
                (
                    case,
                    f"{be}: volume + Ricci (one fused call)",
                    t_g,
                    rerr,
                    f"x{(t_bv + t_br) / t_g:.1f} vs autograd vol + Ricci",
                )
            )
        print(f"width {n} done", flush=True)
    # 784 -> 2000 volume element
    n, d = 2000, 784
    W = torch.randn(n, d, dtype=D64, device=dev) / math.sqrt(d)
    b = torch.randn(n, dtype=D64, device=dev)
    xh = torch.rand(hd_points, d, dtype=D64, device=dev)
    t_o, lv = timeit(
        lambda: sh.log_volume_element(W, b, xh, "sigmoid"),
        dev,
        max(1, repeat // 2),
        lambda: sh.log_volume_element(W, b, xh[:1], "sigmoid"),
    )
    t_b, lvb = timeit(lambda: baseline_logvol(W, b, xh, 16), dev, 1, lambda: baseline_logvol(W, b, xh[:1], 16))
    lab = f"784->2000, {hd_points} pts"
    rows.append(
        (
            lab,
            "autograd logvol (vmap jacfwd + slogdet of J^T J)",
            t_b,
            (lvb - lv).abs().max().item(),
            "abs. error in nats",
        )
    )
    rows.append(
        (
            lab,
            "fastgeom logvol (pivoted QR of diag(s)W/sqrt n, tiled)",
            t_o,
            0.0,
            f"x{t_b / t_o:.1f} vs autograd (this is the reference)",
        )
    )
    lines = [
        f"### shallow ({dev.type})",
        "",
        device_line(),
        "",
        "Sigmoid nets, float64. Median of repeated runs in one process; error vs the float64 torch "
        "reference (relative; Ricci relative to 1+|R|).",
        "",
        "| case | method | median time | max error | notes |",
        "|---|---|---|---|---|",
    ]
    for case, meth, t, e, note in rows:
        lines.append(f"| {case} | {meth} | {t * 1e3:.2f} ms | {e:.1e} | {note.strip()} |")
    lines += [
        "",
        f"Load average while measuring: {__import__('os').getloadavg()[0]:.1f} "
        f"(a shared machine; CPU numbers are noisy).",
    ]
    body = "\n".join(lines)
    print(body)
    if write:
        write_section("shallow" if dev.type == "cpu" else "shallow-cuda", body)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sub", type=int, default=128, help="points on which the slow baselines are timed (scaled)")
    p.add_argument("--hd-points", type=int, default=None, help="points for 784->2000 (default 8 CPU, 1000 GPU)")
    p.add_argument("--widths", type=int, nargs="+", default=[8, 250, 2000])
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    torch.backends.cuda.matmul.allow_tf32 = False
    hd = a.hd_points or (1000 if dev.type == "cuda" else 8)
    run(dev, a.repeat, a.sub, hd, a.widths, not a.no_write)


if __name__ == "__main__":
    main()
