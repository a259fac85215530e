"""Log volume element of CIFAR-style ResNets (GELU): time, peak memory, passes and error per method.

Every method runs in its own subprocess (so peak CPU RSS is per method; on GPU
``torch.cuda.max_memory_allocated``), on the same points, side by side in one run:

- ``paper``: ``torch.autograd.functional.jacobian(..., create_graph=True)``, one backward per output
  (the original authors' code path; only where it fits);
- ``jacrev`` unchunked and ``jacrev@c`` at several chunk sizes (the best one is marked);
- fastgeom ``dense``, ``streamed`` reverse (VJPs) and forward (JVPs), ``linearized`` (the same through
  the traced network linearised once: BatchNorm folded, activation derivatives stored, fused residual
  steps) in both modes, and ``randomized`` at several (probes, steps) budgets (value +- stderr).

Columns: median seconds per point; peak memory above the model-loaded baseline; passes per point
(one JVP or VJP of one vector); |error| against a float64 fastgeom ``streamed`` reference; fraction
of the FP32 roofline = (1 + n) forward FLOPs (the exact minimum, n = min(d_in, d_out); for
randomized 1 + its own passes) / (time x peak FP32). The CPU peak is measured (float32 matmul);
on GPU the datasheet FP32 (non-tensor) peak.

    python bench/logvol_resnet.py --quick     # CPU, ResNet-18 on 8x8 inputs, one point, a few minutes
    python bench/logvol_resnet.py --full      # GPU, ResNet-34 and ResNet-50 on 32x32 inputs

Writes JSON (``--json``, default bench/out/logvol_resnet.json) and the ``logvol_resnet`` section
of bench/RESULTS.md (``--no-write`` to skip).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402

PEAK_FP32 = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "RTX 4090": 82.6e12}


# ----------------------------------------------------------------------------------------------
# model and points
def build_model(arch: str, checkpoint: str | None):
    torch.manual_seed(0)  # the same random model in every method's subprocess
    try:
        from fastgeom.models import cifar_resnet
        model = cifar_resnet(arch, activation="gelu", num_classes=None)
    except (ImportError, AttributeError):
        from torch import nn
        from torchvision import models as tvm
        model = getattr(tvm, arch)(weights=None)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        model.fc = nn.Identity()

        def swap(m):
            for name, c in m.named_children():
                if isinstance(c, nn.ReLU):
                    setattr(m, name, nn.GELU())
                else:
                    swap(c)
        swap(model)
    if not checkpoint:
        # random init with BatchNorm statistics from N(0, 1) inputs (default running stats make a
        # random ResNet's scale explode through the residual stream, which no trained net has)
        torch.manual_seed(0)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(16, 3, 32, 32))
    if checkpoint:
        sd = torch.load(checkpoint, map_location="cpu")
        sd = sd.get("model", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
        missing, unexpected = model.load_state_dict(sd, strict=False)
        print(f"checkpoint {checkpoint}: missing {len(missing)}, unexpected {len(unexpected)} keys", file=sys.stderr)
    return model.eval()


def points(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


# ----------------------------------------------------------------------------------------------
# worker: one method in this process
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class RssSampler:
    """Peak resident memory above the value at start, sampled every 2 ms in a thread (CPU)."""

    def __init__(self):
        import threading
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, self._rss()) - self.base


def _logvol_from_J(J: torch.Tensor) -> float:
    from fastgeom import linalg
    return float(linalg.factor(J.reshape(1, *J.shape[-2:]).to(torch.float64)).logvol[0])


def run_method(method: str, arch: str, size: int, npts: int, dev: torch.device, dtype, checkpoint) -> dict:
    import fastgeom as fg
    from fastgeom.api import no_tf32
    from fastgeom.engine import jacobian_blocks, plan
    from fastgeom.engine.linear_net import LinearGraph
    from fastgeom.features import FeatureMap
    from fastgeom import linalg, randomized

    model = build_model(arch, checkpoint).to(dev, dtype)
    x = points(npts, size).to(dev, dtype)
    fmap = FeatureMap(model)
    with torch.no_grad():
        d_out = fmap(x[:1]).shape[1]
    d_in = x[0].numel()
    n = min(d_in, d_out)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sampler = RssSampler() if dev.type == "cpu" else None
    vals, errs, times = [], [], []
    passes = n
    f1 = (lambda xi: fmap(xi[None])[0])
    with no_tf32():
        for i in range(npts):
            xi = x[i:i + 1]
            _sync(dev)
            t0 = time.perf_counter()
            err = None
            if method == "paper":
                J = torch.autograd.functional.jacobian(f1, xi[0], create_graph=True).detach()
                v = _logvol_from_J(J.reshape(d_out, d_in))
                passes = d_out
            elif method.startswith("jacrev"):
                chunk = int(method.split("@")[1]) if "@" in method else None
                J = torch.func.jacrev(f1, chunk_size=chunk)(xi[0])
                v = _logvol_from_J(J.reshape(d_out, d_in))
                passes = d_out
            elif method == "dense":
                v = float(fg.logvol(model, xi, method="dense", progress=False)[0])
                passes = n
            elif method.startswith(("streamed", "linearized")):
                mode = "forward" if method.endswith("fwd") else "reverse"
                p = plan(fmap, xi, d_in, d_out, mode=mode)
                lin = None
                if method.startswith("linearized"):  # traced once per call, as fastgeom.logvol does
                    graph = LinearGraph(fmap)
                    lin = (lambda xb, _m: graph.linearize(xb))
                (_, J), = list(jacobian_blocks(fmap, xi, d_out, p, linearize=lin))
                v = float(linalg.factor(J).logvol[0])
                passes = d_out if mode == "reverse" else d_in
            elif method.startswith("randomized"):
                pr, st = (int(s) for s in method.split("@")[1].split("x"))
                val, e = randomized.logvol(fmap, xi, d_in, d_out, seed=1234, progress=False, probes=pr, steps=st,
                                           common_random_numbers=True)
                v, err = float(val[0]), float(e[0])
                passes = randomized.passes_logvol(n, pr, st)
            else:
                raise ValueError(f"unknown method {method!r}")
            _sync(dev)
            times.append(time.perf_counter() - t0)
            vals.append(v)
            errs.append(err)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = sampler.stop()
    return {"method": method, "times": times, "values": vals, "stderr": errs, "passes": passes,
            "peak_bytes": int(peak), "d_in": d_in, "d_out": d_out}


def forward_flops(arch: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(arch, None)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(points(1, size))
    return float(fc.get_total_flops())


def peak_fp32(dev: torch.device) -> tuple[float, str]:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name()
        for k, v in PEAK_FP32.items():
            if k in name:
                return v, f"{name} datasheet FP32 {v / 1e12:.1f} TFLOP/s"
    a = torch.randn(1024, 1024, device=dev)
    best = 0.0
    for _ in range(5):
        _sync(dev)
        t0 = time.perf_counter()
        a @ a
        _sync(dev)
        best = max(best, 2 * 1024 ** 3 / (time.perf_counter() - t0))
    return best, f"measured float32 1024^2 matmul {best / 1e9:.1f} GFLOP/s"


# ----------------------------------------------------------------------------------------------
# driver
def spawn(method, args, dtype_name, timeout) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--arch", args.arch_one, "--size",
           str(args.size), "--points", str(args.points), "--device", args.device, "--dtype", dtype_name]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "status": f"timeout > {timeout}s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
        status = "out of memory" if ("out of memory" in r.stderr.lower() or r.returncode in (-9, 137)) else f"failed: {tail}"
        return {"method": method, "status": status}
    out = json.loads(lines[-1])
    out["status"] = "ok"
    out["wall"] = time.time() - t0
    return out


def table(rows, ref_vals, flops, peak, n) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    jac = [r for r in ok if r["method"].startswith("jacrev@")]
    best_chunk = min(jac, key=lambda r: statistics.median(r["times"]))["method"] if jac else None
    hdr = "| method | s / point (median) | peak extra memory | passes / point | max abs error vs fp64 | stderr (mean) | FP32 roofline |\n"
    hdr += "|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        m = r["method"] + (" (best chunk)" if r["method"] == best_chunk else "")
        if r.get("status") != "ok":
            lines.append(f"| {m} | {r['status']} | | | | | |")
            continue
        t = statistics.median(r["times"])
        err = max(abs(a - b) for a, b in zip(r["values"], ref_vals)) if ref_vals else float("nan")
        se = [s for s in r["stderr"] if s is not None]
        useful = (1 + (n if not r["method"].startswith("randomized") else r["passes"])) * flops
        lines.append(f"| {m} | {t:.3g} | {r['peak_bytes'] / 2**20:.0f} MiB | {r['passes']} | {err:.2e} | "
                     f"{(sum(se) / len(se)) if se else float('nan'):.3g} | {useful / (t * peak):.1%} |")
    return hdr + "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU, ResNet-18, 8x8 inputs, 1 point (default)")
    g.add_argument("--full", action="store_true", help="GPU, ResNet-34 and ResNet-50, 32x32 inputs")
    ap.add_argument("--arch", nargs="*", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--timeout", type=int, default=None, help="seconds per method subprocess")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "logvol_resnet.json"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        dev = torch.device(args.device)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        res = run_method(args.worker, args.arch[0], args.size, args.points, dev, getattr(torch, args.dtype),
                         args.checkpoint)
        print(json.dumps(res))
        return

    full = args.full
    args.device = args.device or ("cuda" if full else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--full needs a CUDA device (none visible); use --quick on CPU")
    archs = args.arch or (["resnet34", "resnet50"] if full else ["resnet18"])
    args.size = args.size or (32 if full else 8)
    args.points = args.points or (5 if full else 1)
    timeout = args.timeout or (240 if full else 300)
    chunks = [64] if not full else [64, 256]
    budgets = ["4x8", "8x16"] if not full else ["4x16", "8x32", "16x64"]
    dev = torch.device(args.device)
    peak, peak_note = peak_fp32(dev)
    sections, results = [], {"device": None, "archs": {}}
    from _results import device_line, write_section
    results["device"] = device_line()
    for arch in archs:
        args.arch_one = arch
        methods = args.methods or (["paper", "jacrev"] + [f"jacrev@{c}" for c in chunks] +
                                   ["dense", "streamed", "streamed-fwd", "linearized"]
                                   + ([] if full else ["linearized-fwd"])
                                   + [f"randomized@{b}" for b in budgets])
        if full and arch == "resnet50" and args.methods is None:
            methods.remove("paper")  # > 80 GB per point (the authors' report)
        flops = forward_flops(arch, args.size)
        print(f"[{arch}] float64 reference ...", file=sys.stderr, flush=True)
        ref = spawn("streamed", args, "float64", timeout * 3)
        ref_vals = ref.get("values") if ref.get("status") == "ok" else None
        rows = []
        for m in methods:
            print(f"[{arch}] {m} ...", file=sys.stderr, flush=True)
            r = spawn(m, args, args.dtype, timeout)
            print(f"    {r.get('status')} {r.get('times', '')}", file=sys.stderr, flush=True)
            rows.append(r)
        if args.dtype == "float32" and full:
            for m in ("streamed", "linearized"):
                print(f"[{arch}] {m} float64 timing ...", file=sys.stderr, flush=True)
                r = spawn(m, args, "float64", timeout)
                r["method"] = f"{m} (float64 network)"
                rows.append(r)
        n = min(3 * args.size ** 2, rows[0].get("d_out", 0) or (512 if arch in ("resnet18", "resnet34") else 2048))
        results["archs"][arch] = {"rows": rows, "reference": ref, "forward_flops": flops, "n": n}
        sections.append(f"**{arch}**, input 3x{args.size}x{args.size} ({args.dtype} network, float64 accumulation), "
                        f"{args.points} point(s), forward {flops / 1e9:.3f} GFLOP, n = min(d_in, d_out) = {n}; "
                        f"roofline peak: {peak_note}\n\n" + table(rows, ref_vals, flops, peak, n))
        # written after every architecture, so a run cut short by a timeout keeps what it measured
        body = (f"`python bench/logvol_resnet.py {'--full' if full else '--quick'}` — {results['device']}\n\n"
                + "\n\n".join(sections) + "\n\n" + NOTES)
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        if not args.no_write:
            write_section("logvol_resnet" + ("_gpu" if full else ""), body)
    print(body)


NOTES = """Notes: randomized rows use common random numbers and (probes x Golub-Kahan steps); passes =
probes * (2 * steps - 1). "auto" stays exact (linearized when the model traces, else streamed): at these
sizes the randomized budgets that give sub-nat accuracy need as many passes as the exact engine (n), so
they are not faster here (bench/randomized_path.py has the cost/accuracy curve). linearized = streamed
through the traced network linearised once (BatchNorm folded, stored activation derivatives, fused
residual steps; NHWC on CPU).
Peak memory is above the process's baseline after the model is loaded (CPU: max RSS, so it includes
allocator caching; GPU: max_memory_allocated)."""


if __name__ == "__main__":
    main()
