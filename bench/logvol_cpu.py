"""CPU benchmark of exact log volume elements on CIFAR-style ResNets at one point (issue 2).

Models: torchvision ResNet-34 / ResNet-50 with a 3x3 stride-1 stem, no max-pool, GELU everywhere
and an identity fc (512 / 2048 outputs), random init, float32, one 3x32x32 point. Parameters are
frozen (requires_grad=False) for every method: otherwise jacrev's vmapped backward also forms a
weight gradient per cotangent, which is not part of the Jacobian.
Methods, each configuration in its own process (wall time of the Jacobian + log volume, and peak
RSS above the post-build baseline, measured by resetting VmHWM through /proc/self/clear_refs):
  jacrev          torch.func.jacrev, unchunked
  jacrev-c{N}     torch.func.jacrev(chunk_size=N); the best of these is "best jacrev"
  streamed        fastgeom.logvol(method="streamed") with its default memory budget (768 MiB on CPU)
  streamed-b{M}   the same with budget=M MiB (--budgets)
  linearized      fastgeom.logvol(method="linearized"): the traced network linearised once (BatchNorm
                  folded, activation derivatives stored, NHWC transposed convolutions); -b{M} as above
--repeat N runs the whole method list N times, interleaved, and the table shows per-method medians.
Writes the table to bench/RESULTS.md (section logvol_cpu) and JSON to bench/out/logvol_cpu.json.

    python bench/logvol_cpu.py                 # ResNet-34 and ResNet-50 (about 15 minutes on 2 cores)
    python bench/logvol_cpu.py --quick         # ResNet-18 at 16x16, to check the machinery (1 minute)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def worker(arch: str, method: str, res: int) -> dict:
    import torch
    import fastgeom as fg
    from fastgeom import linalg
    from fastgeom.models import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(arch, activation="gelu", num_classes=None).eval().requires_grad_(False)
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        d_out = model(x).shape[1]
    base = _rss_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    if method.startswith("jacrev"):
        chunk = int(method.split("-c")[1]) if "-c" in method else None
        f = lambda v: model(v[None])[0]  # noqa: E731
        J = torch.func.jacrev(f, chunk_size=chunk)(x[0]).reshape(1, d_out, -1)
        lv = linalg.factor(J, compute_dtype=torch.float32).logvol
    elif method.startswith(("streamed", "linearized")):  # "<method>" (default budget) or "<method>-b<MiB>"
        budget = int(method.split("-b")[1]) * 2**20 if "-b" in method else None
        lv = fg.logvol(model, x, method=method.split("-")[0], progress=False, budget=budget)
    else:
        raise ValueError(method)
    dt = time.perf_counter() - t0
    peak = _rss_kb("VmHWM")
    return {"arch": arch, "method": method, "res": res, "d_out": d_out, "seconds": dt,
            "extra_rss_mb": (peak - base) / 1024 if reset else float("nan"), "logvol": float(lv[0].detach()),
            "threads": torch.get_num_threads()}


def run_one(arch: str, method: str, res: int, timeout: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", arch, method, str(res)]
    t0 = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "method": method, "res": res, "error": f"timeout after {timeout}s"}
    if out.returncode != 0:
        return {"arch": arch, "method": method, "res": res,
                "error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_seconds"] = time.time() - t0
    return r


def medians(rows: list[dict]) -> list[dict]:
    """One row per (arch, method): median seconds and extra RSS over repeats (``runs``); errors kept."""
    import statistics
    out, groups = [], {}
    for r in rows:
        groups.setdefault((r["arch"], r["method"]), []).append(r)
    for (arch, method), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.append(rs[0])
            continue
        m = dict(ok[0])
        m["seconds"] = statistics.median(r["seconds"] for r in ok)
        m["extra_rss_mb"] = statistics.median(r["extra_rss_mb"] for r in ok)
        m["runs"] = len(ok)
        out.append(m)
    return out


def table(rows: list[dict], note: str = "") -> str:
    from _results import device_line
    rows = medians(rows)
    lines = [f"## Exact log volume on CPU, one point (`bench/logvol_cpu.py`)", "", device_line(), "",
             "| model | d_out | method | wall s | extra RSS MB | logvol | vs best jacrev (time) | vs jacrev unchunked (memory) |",
             "|---|---|---|---|---|---|---|---|"]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch and "error" not in r]
        chunked = [r for r in rs if r["method"].startswith("jacrev-c")]
        best = min(chunked, key=lambda r: r["seconds"]) if chunked else None
        unch = next((r for r in rs if r["method"].split(" ")[0] == "jacrev"), None)
        for r in [r for r in rows if r["arch"] == arch]:
            if "error" in r:
                lines.append(f"| {arch} | | {r['method']} | {r['error']} | | | | |")
                continue
            tr = f"{r['seconds'] / best['seconds']:.2f}x" if best else ""
            mr = f"{r['extra_rss_mb'] / unch['extra_rss_mb']:.3f}x" if unch and unch["extra_rss_mb"] > 0 else ""
            tag = (" (best)" if best is r else "") + (f" (median of {r['runs']})" if r.get("runs", 1) > 1 else "")
            lines.append(f"| {arch} | {r['d_out']} | {r['method']}{tag} | {r['seconds']:.1f} | {r['extra_rss_mb']:.0f} | "
                         f"{r['logvol']:.4f} | {tr} | {mr} |")
    lines += ["", "Time ratio: wall time / best chunked jacrev; memory ratio: extra peak RSS / unchunked jacrev. "
              "Each row is its own process; rows of one model ran back to back in one invocation unless the "
              "method says otherwise. Parameters frozen for every method."] + ([note] if note else [])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", nargs=3, metavar=("ARCH", "METHOD", "RES"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", default=None, help="comma list, default resnet34,resnet50")
    p.add_argument("--chunks", default="32,64,128")
    p.add_argument("--budgets", default="", help="extra streamed rows with these budgets (MiB), e.g. 192")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--render", default=None, help="only re-render the table from JSON files (comma list)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--methods", default=None, help="explicit comma list of methods (overrides the defaults)")
    p.add_argument("--json", default=None, help="JSON output path (default bench/out/logvol_cpu.json)")
    p.add_argument("--repeat", type=int, default=1, help="run the method list this many times, interleaved")
    p.add_argument("--note", default="", help="a sentence appended to the table's caption (e.g. the machine load)")
    a = p.parse_args(argv)
    if a.worker:
        arch, method, res = a.worker
        print(json.dumps(worker(arch, method, int(res))))
        return 0
    if a.render:
        rows = [r for f in a.render.split(",") for r in json.load(open(f))]
        rows.sort(key=lambda r: (r["arch"], not r["method"].startswith("jacrev"), r["method"]))
        md = table(rows, a.note)
        print(md)
        if not a.no_write:
            from _results import write_section
            write_section("logvol_cpu", md)
        return 0
    archs = (a.archs or ("resnet18" if a.quick else "resnet34,resnet50")).split(",")
    res = 16 if a.quick else 32
    methods = (["jacrev"] + [f"jacrev-c{c}" for c in a.chunks.split(",") if c] + ["streamed", "linearized"]
               + [f"streamed-b{b}" for b in a.budgets.split(",") if b])
    if a.methods:
        methods = a.methods.split(",")
    rows = []
    from tqdm.auto import tqdm
    for arch in archs:
        for m in tqdm(methods * a.repeat, desc=arch):
            rows.append(run_one(arch, m, res, a.timeout))
            print(json.dumps(rows[-1]), flush=True)
    md = table(rows, a.note)
    print(md)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(a.json or os.path.join(HERE, "out", "logvol_cpu.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if not a.no_write and not a.quick:
        from _results import write_section
        write_section("logvol_cpu", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
