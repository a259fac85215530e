"""Per-call overhead of the public API on a small model, before and after the ``fg.Geometry`` handle.

Model: ``cifar_resnet("resnet18", width=8)`` (10 outputs, GELU, random init, eval), 3x8x8 inputs,
one torch thread; 1 point and 16 points. Timed calls (all on the same points):

  auto / dense      ``fastgeom.logvol(model, x, method=...)``: one fresh call, so its set-up (validation,
                    probe, plan, trace) is paid every call, as by a caller that calls once per batch
  handle-auto       ``g = fastgeom.Geometry(model)`` built (and warmed) once, then ``g.logvol(x)`` per
  handle-dense      call (only where ``fastgeom.Geometry`` exists)
  jacrev            ``torch.func.jacrev(lambda xb: model(xb).sum(0))(x)`` and the log volume from
                    ``torch.linalg.svdvals`` in float64: the same code in both trees, the load control

``--tree DIR`` (repeatable, e.g. ``--tree before=/work/wt/before --tree after=.``) runs one worker process
per tree with PYTHONPATH=DIR, alternating the trees ``--alternations`` times; each worker warms every
call once, then times ``--rounds`` rounds of all calls in rotating order. The table gives medians over
all timed calls of a tree, the ratio of the medians after / before, and the first (cold) call of a
process. Writes JSON (``--json``) and the ``overhead`` section of bench/RESULTS.md (``--no-write`` to skip).

    python bench/overhead.py --tree before=/work/wt/before --tree after=.     # about 4 minutes, loaded 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (1, 16)


# ------------------------------------------------------------------------------------------ worker
def worker(rounds: int, seed: int = 0) -> dict:
    """Runs in a process whose ``fastgeom`` is the tree under test (PYTHONPATH)."""
    import torch

    torch.set_num_threads(1)
    import fastgeom as fg
    from fastgeom.models import cifar_resnet

    torch.manual_seed(seed)
    model = cifar_resnet("resnet18", width=8).eval()
    xs = {n: torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))[:n] for n in SIZES}
    handles = {}
    has_handle = hasattr(fg, "Geometry")

    def jacrev(x):
        J = torch.func.jacrev(lambda xb: model(xb).sum(0))(x)  # (d_out, B, *in): points are independent
        J = J.reshape(J.shape[0], x.shape[0], -1).permute(1, 0, 2).double()
        return torch.linalg.svdvals(J).log().sum(-1)

    def call(name, n):
        x = xs[n]
        if name == "jacrev":
            return jacrev(x), None
        if name.startswith("handle-"):
            g = handles[(name, n)]
            return g.logvol(x, progress=False, return_diagnostics=True)
        return fg.logvol(model, x, method=name, progress=False, return_diagnostics=True)

    names = ["auto", "dense", "jacrev"] + (["handle-auto", "handle-dense"] if has_handle else [])
    items = [(m, n) for n in SIZES for m in names]
    out = {
        "fastgeom_file": fg.__file__,
        "threads": torch.get_num_threads(),
        "cold": {},
        "times": {},
        "cpu": {},
        "values": {},
        "diag": {},
    }
    for m, n in items:  # warm-up: every call once (the handles are built and warmed here, outside the timing)
        key = f"{m}@{n}"
        if m.startswith("handle-"):
            handles[(m, n)] = fg.Geometry(model, method=m.split("-")[1])
        t0 = time.perf_counter()
        lv, diag = call(m, n)
        out["cold"][key] = time.perf_counter() - t0
        out["values"][key] = [float(v) for v in lv]
        out["times"][key] = []
        if diag is not None:
            out["diag"][key] = {k: str(getattr(diag, k, "")) for k in ("method", "mode", "chunk", "reason")}
    for r in range(rounds):
        order = items[r % len(items) :] + items[: r % len(items)]
        if r % 2:
            order = order[::-1]
        for m, n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            call(m, n)
            out["times"][f"{m}@{n}"].append(time.perf_counter() - t0)
            out["cpu"].setdefault(f"{m}@{n}", []).append(time.process_time() - c0)
    return out


# ------------------------------------------------------------------------------------------ driver
def spawn(tree: str, rounds: int, timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rounds", str(rounds)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=os.path.abspath(tree))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"worker for {tree} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1])


def table(res: dict, trees: list[str], load: tuple[float, float], note: str) -> str:
    from _results import device_line

    keys = list(dict.fromkeys(k for t in trees for k in res[t]["times"]))
    hdr = "| call | points | " + " | ".join(f"{t} CPU s (median)" for t in trees)
    hdr += f" | {trees[-1]} / {trees[0]} (CPU) | " if len(trees) > 1 else " | "
    hdr += " | ".join(f"{t} wall s (median)" for t in trees)
    hdr += f" | {trees[-1]} / {trees[0]} (wall) |" if len(trees) > 1 else " |"
    hdr += " " + " | ".join(f"{t} first call s" for t in trees) + " | calls timed | what ran (last tree) |"
    lines = [
        "## Per-call overhead of the public API (`bench/overhead.py`)",
        "",
        device_line(),
        "",
        hdr,
        "|" + "---|" * (hdr.count("|") - 1),
    ]
    for k in keys:
        m, n = k.split("@")

        def cols(key):
            med = {t: statistics.median(res[t][key][k]) for t in trees if res[t].get(key, {}).get(k)}
            cells = [f"{med[t]:.3f}" if t in med else "n/a" for t in trees]
            ratio = f"{med[trees[-1]] / med[trees[0]]:.2f}x" if len(trees) > 1 and all(t in med for t in trees) else ""
            return " | ".join(cells) + (f" | {ratio}" if len(trees) > 1 else "")

        cold = [f"{res[t]['cold'][k]:.2f}" if k in res[t]["cold"] else "n/a" for t in trees]
        counts = "/".join(str(len(res[t]["times"].get(k, []))) for t in trees)
        d = res[trees[-1]]["diag"].get(k)
        what = f"{d['method']} ({d['mode']}, chunk {d['chunk']})" if d else ""
        lines.append(
            f"| {m} | {n} | "
            + cols("cpu")
            + " | "
            + cols("times")
            + " | "
            + " | ".join(cold)
            + f" | {counts} | {what} |"
        )
    lines += [
        "",
        'Model `cifar_resnet("resnet18", width=8)` (10 outputs), 3x8x8 points, 1 torch thread. '
        "auto/dense: a fresh `fastgeom.logvol` call each time (set-up paid per call); handle-*: one "
        "`fastgeom.Geometry(model, method=...)` reused (built and warmed before the timing); jacrev: "
        "`torch.func.jacrev` of the batch-summed output plus float64 `svdvals`, identical code in every "
        "tree (a control for load drift between the trees' processes). CPU s = CPU time of the worker process (one "
        "torch thread; robust to other jobs' load, which inflates the wall time by the waits for a core). Trees: "
        + ", ".join(f"{t} = fastgeom/ as of commit `{res[t]['commit']}`" for t in trees)
        + f". One worker process per tree, the trees alternated; medians over all timed calls; "
        f"first call = the warm-up call in a fresh process (median over the tree's processes). "
        f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, on 2 cores shared "
        f"with other jobs.",
    ] + ([note] if note else [])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", action="append", default=None, help="LABEL=DIR, a source tree holding fastgeom/")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds per worker process")
    ap.add_argument("--alternations", type=int, default=2, help="worker processes per tree, alternated")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "overhead.json"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.rounds)))
        return 0
    trees = [t.split("=", 1) for t in (a.tree or [f"after={os.path.dirname(HERE)}"])]
    labels = [t[0] for t in trees]
    res = {lab: {"times": {}, "cold": {}, "diag": {}, "values": {}, "cpu": {}} for lab in labels}
    load0 = os.getloadavg()[0]
    colds: dict = {lab: {} for lab in labels}
    for i in range(a.alternations):
        for lab, d in trees if i % 2 == 0 else trees[::-1]:
            print(f"[{i}] {lab}: {d}", file=sys.stderr, flush=True)
            w = spawn(d, a.rounds, a.timeout)
            r = res[lab]
            r["commit"] = subprocess.run(
                ["git", "-C", d, "log", "-1", "--format=%h", "--", "fastgeom"], capture_output=True, text=True
            ).stdout.strip() + (
                " + working tree"
                if subprocess.run(
                    ["git", "-C", d, "status", "--porcelain", "fastgeom"], capture_output=True, text=True
                ).stdout.strip()
                else ""
            )
            r["fastgeom_file"] = w["fastgeom_file"]
            for k, ts in w["times"].items():
                r["times"].setdefault(k, []).extend(ts)
                r.setdefault("cpu", {}).setdefault(k, []).extend(w["cpu"].get(k, []))
                colds[lab].setdefault(k, []).append(w["cold"][k])
            r["diag"].update(w["diag"])
            r["values"].update(w["values"])
    for lab in labels:
        res[lab]["cold"] = {k: statistics.median(v) for k, v in colds[lab].items()}
    load = (load0, os.getloadavg()[0])
    sys.path.insert(0, HERE)
    md = table(res, labels, load, a.note)
    print(md)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"trees": dict(trees), "results": res, "load": load}, f, indent=1)
    if not a.no_write:
        from _results import write_section

        write_section("overhead", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
