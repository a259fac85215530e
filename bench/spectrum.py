"""Spectrum against log volume on the same points (issue 14 item 3: target spectrum <= 2x logvol).

Case: the issue's shape, J 544 x 3072 (a 3 x 32 x 32 input, a tanh MLP 3072 -> 1024 -> 544, float64).
Times ``fg.logvol`` and ``fg.spectrum`` (same points, same method) as medians of ``--repeat`` runs,
interleaved, and their ratio; then the singular-value step alone on one point's R factor (544 x 544):
the certified warm start (``linalg.warm_start`` then the compiled sweeps; what ``spectrum`` runs), the
compiled Jacobi kernel from cold (the previous path), the torch reference (the previous
implementation; timed once, ``--skip-reference`` leaves it out) and numpy's LAPACK SVD (not
relatively accurate on graded matrices; for scale only); with their largest relative difference.

    python bench/spectrum.py              # about 2-4 minutes on a busy 2-core machine

Results go to bench/RESULTS.md (section "spectrum") unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastgeom as fg  # noqa: E402
from fastgeom import linalg  # noqa: E402
from fastgeom.ops import svd  # noqa: E402

try:
    from bench._results import device_line, write_section  # noqa: E402
except ImportError:  # run as a script from bench/
    from _results import device_line, write_section  # noqa: E402

D64 = torch.float64


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _both(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds: on a shared machine the CPU time is the steadier of the two."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="do not time the torch reference Jacobi")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 1024), nn.Tanh(), nn.Linear(1024, 544), nn.Tanh()).to(D64)
    x = torch.randn(args.points, 3, 32, 32, dtype=D64)
    fg.logvol(model, x[:1])  # warm-up
    t_lv, t_sp = [], []
    for _ in range(args.repeat):
        t_lv.append(_both(lambda: fg.logvol(model, x)))
        t_sp.append(_both(lambda: fg.spectrum(model, x)))
    lv, s = fg.logvol(model, x), fg.spectrum(model, x)
    agree = float((torch.log(s).sum(-1) - lv).abs().max())
    m_lv, m_sp = (statistics.median(t[0] for t in ts) for ts in (t_lv, t_sp))
    c_lv, c_sp = (statistics.median(t[1] for t in ts) for ts in (t_lv, t_sp))

    f = linalg.factor(fg.jacobian(model, x[:1]))
    X = f.cores[0].mT[None]
    Xp = torch.linalg.qr(X, mode="r").R.mT
    rows = []

    def warm():
        Y, ok = linalg.warm_start(Xp)
        return svd.jacobi_svdvals(Y) if bool(ok.all()) else svd.jacobi_svdvals(Xp)

    certified = bool(linalg.warm_start(Xp)[1].all())
    s_c = warm()
    rows.append(
        (
            "certified warm start (LAPACK V0, bound, then compiled sweeps; what spectrum runs)"
            + ("" if certified else " -- NOT certified here, ran cold"),
            statistics.median(_time(warm) for _ in range(args.repeat)),
            s_c,
        )
    )
    rows.append(
        (
            "compiled Jacobi from cold on the same preconditioned factor (previous spectrum path)",
            statistics.median(_time(lambda: svd.jacobi_svdvals(Xp)) for _ in range(args.repeat)),
            svd.jacobi_svdvals(Xp),
        )
    )
    if not args.skip_reference:
        t = time.perf_counter()
        s_r = svd.reference.jacobi_svdvals(X)
        rows.append(("torch reference Jacobi (previous implementation), once", time.perf_counter() - t, s_r))
    Xn = X[0].numpy()
    rows.append(
        (
            "numpy.linalg.svd (LAPACK gesdd; normwise accuracy only)",
            statistics.median(_time(lambda: np.linalg.svd(Xn, compute_uv=False)) for _ in range(args.repeat)),
            torch.from_numpy(np.linalg.svd(Xn, compute_uv=False))[None],
        )
    )

    lines = [
        "## Spectrum against log volume (`bench/spectrum.py`)",
        "",
        device_line(),
        "",
        f"J {544} x {3072} (tanh MLP 3072 -> 1024 -> 544, float64), {args.points} points, median of "
        f"{args.repeat}, interleaved:",
        "",
        "| call | wall (s) | ratio to logvol | CPU (s) | CPU ratio to logvol |",
        "|---|---|---|---|---|",
        f"| `fg.logvol` | {m_lv:.2f} | 1.00 | {c_lv:.2f} | 1.00 |",
        f"| `fg.spectrum` | {m_sp:.2f} | {m_sp / m_lv:.2f} | {c_sp:.2f} | {c_sp / c_lv:.2f} |",
        "",
        f"Target spectrum <= 2x logvol: {'met' if max(m_sp / m_lv, c_sp / c_lv) <= 2 else 'not met'} here "
        f"(wall {m_sp / m_lv:.2f}x, CPU {c_sp / c_lv:.2f}x). max over points of abs(sum log s - logvol): "
        f"{agree:.1e}",
        "",
        "Singular values of one point's 544 x 544 R factor:",
        "",
        "| method | time (s) | max rel. diff. to what spectrum runs |",
        "|---|---|---|",
    ]
    for name, t, sv in rows:
        lines.append(f"| {name} | {t:.3f} | {float((sv / s_c - 1).abs().max()):.1e} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section("spectrum", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
