"""Exact log volume elements through the public API: time, peak memory, passes and error per method.

Every fastgeom row is one public call, ``fastgeom.logvol(model, x, method=..., mode=...)`` (so its
validation, probe, plan and, for ``linearized``, trace are timed, as a caller pays them), with
``Diagnostics`` saying what ran. The external baseline is ``torch.func.jacrev`` of the batch-summed
output (unchunked, and chunked at several sizes: the best is marked), reduced by the same
``fastgeom.linalg.factor``. Methods:

  jacrev, jacrev@C          torch.func.jacrev (chunk_size=C)
  auto, dense, streamed, linearized    fastgeom.logvol(method=...); ``-fwd``: mode="forward" (JVPs)
  randomized@PxS            fastgeom.logvol(method="randomized", P probes x S Golub-Kahan steps, common
                            random numbers), value +- stderr

Models (``--models``): ``mlp64`` (64 -> 128 -> 10, tanh), ``mlp512`` (512 -> 512 -> 512, tanh),
``resnet18w8`` (``cifar_resnet("resnet18", width=8)``, 10 outputs) and ``resnet18`` / ``resnet34`` /
``resnet50`` (CIFAR-style GELU ResNets with identity fc, 512 / 2048 outputs, BatchNorm statistics from
N(0, 1) inputs, or ``--checkpoint``).

Modes:

    python bench/logvol.py --quick    # CPU: ResNet-18 on 8x8, 1 point, every method in its own process
                                      # (peak RSS per method), a few minutes      -> section logvol_quick
    python bench/logvol.py --set      # CPU: auto against the fastest exact method on the benchmark set
                                      # (MLPs, small ResNet, ResNet-18/34 at 32x32), in-process,
                                      # interleaved, medians                      -> section logvol_auto
    python bench/logvol.py --full     # GPU: ResNet-34 and ResNet-50 on 32x32     -> section logvol_full

In-process runs warm every method once, then time ``--rounds`` rounds in rotating order (ratios side
by side; ``--set`` adds rounds until 20 s of timing, and judges auto by the CPU time of its
single-threaded worker, which other jobs' load does not inflate as it does the wall time); peak memory is
CUDA ``max_memory_allocated`` above the start of the call, or on CPU the
sampled RSS above it (a lower bound in-process: the allocator reuses what earlier calls freed;
``--isolate`` gives every method its own process, where it is the process's peak above the
model-loaded baseline). |error| is against fastgeom ``streamed`` on the float64 network. Writes JSON
(``--json``) and the section (``--no-write`` to skip).
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402

PEAK_FP32 = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "RTX 4090": 82.6e12}
EXACT = ("dense", "streamed", "linearized")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


# ------------------------------------------------------------------------------------------ models
def build_model(arch: str, checkpoint: str | None = None):
    """CIFAR-style GELU ResNet (identity fc), random init with BatchNorm statistics from N(0, 1) inputs
    (the default running statistics make a random ResNet's scale explode through the residual stream,
    which no trained net has), or the weights of ``checkpoint``; eval mode."""
    from fastgeom.models import cifar_resnet

    torch.manual_seed(0)  # the same random model in every process
    model = cifar_resnet(arch, activation="gelu", num_classes=None)
    if checkpoint:
        sd = torch.load(checkpoint, map_location="cpu")
        sd = sd.get("model", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
        missing, unexpected = model.load_state_dict(sd, strict=False)
        print(f"checkpoint {checkpoint}: missing {len(missing)}, unexpected {len(unexpected)} keys", file=sys.stderr)
    else:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(16, 3, 32, 32))
    return model.eval()


def model_and_shape(name: str, size: int, checkpoint: str | None = None):
    """(model in eval mode with frozen parameters, input shape of one point)."""
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp64":
        model, shape = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10)), (64,)
    elif name == "mlp512":
        model, shape = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh()), (512,)
    elif name == "resnet18w8":
        from fastgeom.models import cifar_resnet

        model, shape = cifar_resnet("resnet18", width=8), (3, size, size)
    elif name in RESNETS:
        model, shape = build_model(name, checkpoint), (3, size, size)
    else:
        raise ValueError(f"unknown model {name!r}")
    # frozen: otherwise jacrev's vmapped backward also forms a weight gradient per cotangent
    return model.eval().requires_grad_(False), shape


def points(n: int, shape: tuple, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ one call
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class RssSampler:
    """Peak resident memory above the value at start, sampled every 2 ms in a thread (CPU)."""

    def __init__(self, base: int | None = None):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self._rss() if base is None else base
        self.peak = self._rss()
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


def call(method: str, model, x: torch.Tensor) -> dict:
    """One timed call of ``method`` on all points x: values, seconds, what ran."""
    import fastgeom as fg
    from fastgeom import linalg

    dev = x.device
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    info: dict = {}
    err = None
    if method.startswith("jacrev"):
        chunk = int(method.split("@")[1]) if "@" in method else None
        J = torch.func.jacrev(lambda xb: model(xb).flatten(1).sum(0), chunk_size=chunk)(x)  # (d_out, B, *in)
        J = J.reshape(J.shape[0], x.shape[0], -1).permute(1, 0, 2).to(torch.float64)
        val = linalg.factor(J, compute_dtype=x.dtype).logvol
        info = {"ran": f"jacrev (chunk {chunk})" if chunk else "jacrev (unchunked)", "passes": J.shape[1]}
    elif method.startswith("randomized"):
        pr, st = (int(s) for s in method.split("@")[1].split("x"))
        val, err = fg.logvol(
            model,
            x,
            method="randomized",
            seed=1234,
            return_stderr=True,
            progress=False,
            options=dict(probes=pr, steps=st, common_random_numbers=True),
        )
        from fastgeom import randomized

        with torch.no_grad():
            n = min(x[0].numel(), model(x[:1]).flatten(1).shape[1])
        info = {"ran": "randomized", "passes": randomized.passes_logvol(n, pr, st)}
    else:
        name = method.split("-")[0]
        mode = "forward" if method.endswith("-fwd") else None
        val, diag = fg.logvol(model, x, method=name, mode=mode, progress=False, return_diagnostics=True)
        passes = diag.d_out if diag.mode in ("reverse", "jacrev") else diag.d_in
        info = {
            "ran": f"{diag.method} ({diag.mode}" + (f", chunk {diag.chunk}" if diag.chunk else "") + ")",
            "passes": passes,
            "reason": diag.reason,
            "points_per_batch": diag.points_per_batch,
        }
    _sync(dev)
    info["seconds"], info["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    info["values"] = [float(v) for v in val.detach().cpu()]
    info["stderr"] = [float(v) for v in err.cpu()] if err is not None else None
    return info


def measured_call(method: str, model, x: torch.Tensor, rss_base: int | None = None, rss: bool = True) -> dict:
    """``call`` with its peak memory above the start of the call (or above ``rss_base`` on CPU; -1 with
    ``rss=False``, which keeps the sampling thread's CPU time out of ``cpu_seconds``)."""
    dev = x.device
    if dev.type == "cpu" and not rss:
        r = call(method, model, x)
        r["peak_bytes"] = -1
    elif dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        r = call(method, model, x)
        r["peak_bytes"] = int(torch.cuda.max_memory_allocated() - base)
    else:
        s = RssSampler(rss_base)
        try:
            r = call(method, model, x)
        finally:
            peak = s.stop()
        r["peak_bytes"] = int(peak)
    return r


# ------------------------------------------------------------------------------------------ worker
def worker(a) -> dict:
    """One process: one model, the methods interleaved (or one method when isolated)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    model, shape = model_and_shape(a.model, a.size, a.checkpoint)
    model = model.to(dev, dtype)
    x = points(a.points, shape).to(dev, dtype)
    methods = a.methods.split(",")
    out = {m: {"times": [], "cpu_times": [], "status": "ok"} for m in methods}
    rss0 = RssSampler()._rss() if dev.type == "cpu" else None

    def one(m, isolated_base=None):
        try:
            return measured_call(m, model, x, isolated_base, rss=not a.no_rss)
        except Exception as e:  # noqa: BLE001 - recorded in the table
            from fastgeom.engine import is_oom

            out[m]["status"] = "out of memory" if is_oom(e) else f"failed: {type(e).__name__}: {str(e)[:120]}"
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            return None

    rounds = a.rounds
    if a.warmup:
        for m in methods:
            r = one(m)
            if r is not None:
                out[m]["cold_s"] = r["seconds"]
    t_start = time.perf_counter()
    i = 0
    # short calls: more rounds, until the timing has taken min_seconds (at most 40 rounds)
    while i < rounds or (time.perf_counter() - t_start < a.min_seconds and i < 40):
        k = i % len(methods)
        order = methods[k:] + methods[:k]
        for m in order[::-1] if i % 2 else order:
            if out[m]["status"] != "ok":
                continue
            r = one(m, rss0 if a.isolate_rss else None)
            if r is None:
                continue
            o = out[m]
            o["times"].append(r.pop("seconds"))
            o["cpu_times"].append(r.pop("cpu_seconds"))
            o["peak_bytes"] = max(o.get("peak_bytes", -1), r.pop("peak_bytes"))
            o.update(r)
        i += 1
    with torch.no_grad():
        d_out = model(x[:1]).flatten(1).shape[1]
    return {
        "model": a.model,
        "size": a.size,
        "points": a.points,
        "d_in": x[0].numel(),
        "d_out": d_out,
        "threads": torch.get_num_threads(),
        "dtype": a.dtype,
        "device": str(dev),
        "methods": out,
    }


# ------------------------------------------------------------------------------------------ driver
def spawn(
    model: str, methods: list[str], a, *, dtype: str | None = None, rounds=None, warmup=None, isolate_rss=False
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--models",
        model,
        "--methods",
        ",".join(methods),
        "--size",
        str(a.size_of(model)),
        "--points",
        str(a.points_of(model)),
        "--device",
        a.device,
        "--dtype",
        dtype or a.dtype,
        "--rounds",
        str(a.rounds_of(model) if rounds is None else rounds),
        "--threads",
        str(a.threads or 0),
    ]
    cmd += ["--warmup"] if (a.warmup if warmup is None else warmup) else []
    cmd += ["--isolate-rss"] if isolate_rss else []
    cmd += ["--min-seconds", str(a.min_seconds)] if a.min_seconds and not isolate_rss else []
    cmd += ["--no-rss"] if a.no_rss and not isolate_rss else []
    cmd += ["--checkpoint", a.checkpoint] if a.checkpoint else []
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"methods": {m: {"status": f"timeout > {a.timeout}s", "times": []} for m in methods}}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
        oom = "out of memory" in r.stderr.lower() or r.returncode in (-9, 137)
        return {"methods": {m: {"status": "out of memory" if oom else f"failed: {tail}", "times": []} for m in methods}}
    return json.loads(lines[-1])


def forward_flops(model_name: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, shape = model_and_shape(model_name, size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(points(1, shape))
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
        best = max(best, 2 * 1024**3 / (time.perf_counter() - t0))
    return best, f"measured float32 1024^2 matmul {best / 1e9:.1f} GFLOP/s"


def auto_ratio(ms: dict, key: str = "times") -> tuple[float | None, str | None]:
    """(median auto time / the fastest exact method's, that method); ``key``: "times" (wall) or
    "cpu_times" (CPU time of the process: with one torch thread, robust to other jobs' load)."""
    med = {m: statistics.median(r[key]) for m, r in ms.items() if r.get("status") == "ok" and r.get(key)}
    exact = {m: t for m, t in med.items() if m.split("-")[0] in EXACT}
    if "auto" not in med or not exact:
        return None, None
    best = min(exact, key=exact.get)
    return med["auto"] / exact[best], best


def med_ratio(ms: dict, a: str, b: str, key: str = "times") -> float | None:
    ta, tb = ms.get(a, {}).get(key), ms.get(b, {}).get(key)
    return statistics.median(ta) / statistics.median(tb) if ta and tb else None


def model_table(res: dict, ref: list | None, flops: float, peak: float, memory_note: str) -> str:
    ms = res["methods"]
    ok = {m: r for m, r in ms.items() if r.get("status") == "ok" and r["times"]}
    med = {m: statistics.median(r["times"]) for m, r in ok.items()}
    jac = [m for m in med if m.startswith("jacrev@")]
    best_jac = min(jac, key=med.get) if jac else None
    exact = [m for m in med if m.split("-")[0] in EXACT]
    best_exact = min(exact, key=med.get) if exact else None
    n = min(res["d_in"], res.get("d_out") or res["d_in"])
    lines = [
        "| method | what ran | s / call (median) | CPU s / call (median) | calls | vs fastest exact | vs best jacrev | "
        f"peak extra memory ({memory_note}) | passes / point | max abs error vs fp64 | stderr (mean) | "
        "FP32 roofline |",
        "|" + "---|" * 12,
    ]
    for m, r in ms.items():
        tag = (" (best chunk)" if m == best_jac else "") + (" (fastest exact)" if m == best_exact else "")
        if m not in ok:
            lines.append(f"| {m}{tag} | {r.get('status')} |" + " |" * 10)
            continue
        t = med[m]
        err = max(abs(a - b) for a, b in zip(r["values"], ref)) if ref else float("nan")
        se = [s for s in (r.get("stderr") or []) if s is not None]
        useful = (1 + (r["passes"] if m.startswith("randomized") else n)) * flops * res["points"]
        vs_exact = f"{t / med[best_exact]:.2f}x" if best_exact else ""
        vs_jac = f"{t / med[best_jac]:.2f}x" if best_jac else ""
        cpu = f"{statistics.median(r['cpu_times']):.3g}" if r.get("cpu_times") else ""
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r.get("peak_bytes", -1) >= 0 else "not measured"
        lines.append(
            f"| {m}{tag} | {r['ran']} | {t:.3g} | {cpu} | {len(r['times'])} | {vs_exact} | {vs_jac} | "
            f"{mem} | {r['passes']} | {err:.2e} | "
            f"{(sum(se) / len(se)) if se else float('nan'):.3g} | {useful / (t * peak):.1%} |"
        )
    ratio, best = auto_ratio(ms)
    cratio, cbest = auto_ratio(ms, "cpu_times")
    if ratio is not None:
        reason = ok["auto"].get("reason", "")
        cpu = f"; CPU time: {cratio:.2f}x the fastest ({cbest})" if cratio else ""
        lines += ["", f"auto / fastest exact: wall {ratio:.2f}x the fastest ({best}){cpu}; auto's reason: {reason}"]
    return "\n".join(lines)


def auto_table(results: dict) -> str:
    lines = [
        "| model | input | points | auto s | dense s | streamed s | linearized s | auto CPU s | dense CPU s | "
        "streamed CPU s | linearized CPU s | fastest exact (CPU) | auto / fastest, CPU time | <= 1.2x | "
        "auto / fastest, wall | auto / streamed, CPU | auto ran | auto's reason |",
        "|" + "---|" * 18,
    ]
    for name, res in results.items():
        ms = res["methods"]

        def cell(m, key="times"):
            r = ms.get(m, {})
            return (
                f"{statistics.median(r[key]):.3g}" if r.get("status") == "ok" and r.get(key) else (r.get("status", "-"))
            )

        ratio, _ = auto_ratio(ms)
        cratio, cbest = auto_ratio(ms, "cpu_times")
        same = med_ratio(ms, "auto", "streamed", "cpu_times")
        shape = "x".join(str(s) for s in res.get("shape", [])) or "?"
        a = ms.get("auto", {})
        verdict = ("yes" if cratio <= 1.2 else "**no**") if cratio else ""
        lines.append(
            f"| {name} | {shape} | {res.get('points')} | "
            + " | ".join(cell(m) for m in ("auto",) + EXACT)
            + " | "
            + " | ".join(cell(m, "cpu_times") for m in ("auto",) + EXACT)
            + f" | {cbest or '-'} | {f'{cratio:.2f}x' if cratio else ''} | {verdict} | "
            + f"{f'{ratio:.2f}x' if ratio else ''} | {f'{same:.2f}x' if same else ''} | "
            + f"{a.get('ran', '')} | {a.get('reason', '')} |"
        )
    return "\n".join(lines)


def render(results: dict, label: str, a, peak_note: str, memory_note: str, peak: float) -> str:
    from _results import device_line

    parts = []
    for nm, rs in results.items():
        shape_s = "x".join(map(str, rs["shape"]))
        parts.append(
            f"**{nm}**, input {shape_s} ({rs.get('dtype', a.dtype)} network, float64 accumulation), "
            f"{rs['points']} point(s) per call, forward {rs['flops'] / 1e9:.4f} GFLOP, torch threads "
            f"{rs.get('threads')}; measured {rs['measured']}, load average (1 min) {rs['load'][0]:.1f} "
            f"before, {rs['load'][1]:.1f} after; roofline peak: {peak_note}\n\n"
            + model_table(rs, rs["ref"], rs["flops"], peak, memory_note)
        )
    how = (
        "every method in its own process, no warm-up"
        if a.isolate
        else "one process per model, every method warmed once, then interleaved in rotating order"
    )
    return (
        f"`python bench/logvol.py --{'set' if label == 'auto' else label}` — {device_line()}\n\n"
        + (auto_table(results) + "\n\n" + AUTO_NOTES + "\n\n" if label == "auto" else "")
        + "\n\n".join(parts)
        + "\n\n"
        + f"Timing: {how}; medians over the 'calls' column ({os.cpu_count()} CPUs visible). "
        + NOTES
        + (f"\n{a.note}" if a.note else "")
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU, ResNet-18 on 8x8, 1 point, isolated (default)")
    g.add_argument("--set", action="store_true", help="CPU, auto against the fastest exact method, benchmark set")
    g.add_argument("--full", action="store_true", help="GPU, ResNet-34 and ResNet-50 on 32x32")
    ap.add_argument("--models", default=None, help="comma list (see the module docstring)")
    ap.add_argument("--methods", default=None, help="comma list (default: per mode)")
    ap.add_argument("--size", type=int, default=None, help="image side for the ResNets")
    ap.add_argument("--points", type=int, default=None, help="points per call (default: per mode and model)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, all on GPU)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per process")
    ap.add_argument("--isolate", action="store_true", help="every method in its own process (CPU peak RSS)")
    ap.add_argument("--no-reference", action="store_true", help="skip the float64 reference (error column)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--timeout", type=int, default=None, help="seconds per worker process")
    ap.add_argument("--note", default="", help="a sentence appended to the section (e.g. the machine load)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--merge", action="store_true", help="keep the other models of the JSON's earlier run")
    ap.add_argument("--render", action="store_true", help="only re-render the section from the JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--isolate-rss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-rss", action="store_true", help="CPU in-process: no RSS sampling thread")
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="in-process: add rounds (up to 40) until the timing takes about this long",
    )
    a = ap.parse_args(argv)
    if a.worker:
        a.model = a.models
        print(json.dumps(worker(a)))
        return 0

    label = "full" if a.full else "auto" if a.set else "quick"
    small = ("mlp64", "mlp512", "resnet18w8")
    a.device = a.device or ("cuda" if a.full else "cpu")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--full needs a CUDA device (none visible); use --quick or --set on CPU")
    if a.threads is None:
        a.threads = 1 if a.device == "cpu" else 0
    models = (
        a.models
        or {"full": "resnet34,resnet50", "auto": "mlp64,mlp512,resnet18w8,resnet18,resnet34", "quick": "resnet18"}[
            label
        ]
    ).split(",")
    default_points = {"full": 2, "quick": 1}
    a.points_of = lambda m: a.points or default_points.get(label) or (4 if m == "mlp512" else 16 if m in small else 1)
    a.size_of = lambda m: a.size or (8 if m == "resnet18w8" or label == "quick" else 32)
    a.isolate = a.isolate or label == "quick"
    a.warmup = not a.isolate
    a.rounds_of = lambda m: a.rounds or (1 if a.isolate else 7 if m in small else 2)
    if label == "auto":
        a.min_seconds = a.min_seconds or 20.0
        a.no_rss = True  # CPU time of the process is the load-robust measure here (one torch thread)
    a.timeout = a.timeout or (240 if label == "full" else 900)
    if a.methods:
        methods = a.methods.split(",")
    elif label == "auto":
        methods = ["auto", "dense", "streamed", "linearized", "jacrev@64"]
    elif label == "quick":
        methods = [
            "jacrev",
            "jacrev@64",
            "auto",
            "dense",
            "streamed",
            "streamed-fwd",
            "linearized",
            "linearized-fwd",
            "randomized@4x8",
            "randomized@8x16",
        ]
    else:
        methods = [
            "jacrev",
            "jacrev@64",
            "jacrev@256",
            "auto",
            "dense",
            "streamed",
            "streamed-fwd",
            "linearized",
            "randomized@4x16",
            "randomized@8x32",
            "randomized@16x64",
        ]
    from _results import device_line, write_section

    dev = torch.device(a.device)
    peak, peak_note = peak_fp32(dev)
    memory_note = (
        "CUDA max allocated"
        if dev.type == "cuda"
        else "own process, peak RSS above the loaded model"
        if a.isolate
        else "in-process RSS, a lower bound"
    )
    section = {"full": "logvol_full", "auto": "logvol_auto", "quick": "logvol_quick"}[label]
    json_path = a.json or os.path.join(HERE, "out", f"logvol_{label}.json")
    results = {}
    if a.render:
        with open(json_path) as f:
            saved = json.load(f)
        results = saved["results"]
        peak, peak_note = saved.get("peak", peak), saved.get("peak_note", peak_note)
        body = render(results, label, a, peak_note, memory_note, peak)
        print(body)
        if not a.no_write:
            write_section(section, body)
        return 0
    if a.merge and os.path.exists(json_path):  # keep the other models of an earlier run of this mode
        with open(json_path) as f:
            results = {k: v for k, v in json.load(f)["results"].items() if k not in models}
    for name in models:
        load0 = os.getloadavg()[0]
        print(f"[{name}] {','.join(methods)} ...", file=sys.stderr, flush=True)
        if a.isolate:
            res = None
            for i in range(a.rounds_of(name)):
                for m in methods if i % 2 == 0 else methods[::-1]:
                    r = spawn(name, [m], a, rounds=1, warmup=False, isolate_rss=True)
                    if res is None:
                        res = {k: v for k, v in r.items() if k != "methods"} | {"methods": {mm: None for mm in methods}}
                    prev = res["methods"][m]
                    cur = r["methods"][m]
                    if prev and prev.get("status") == "ok" and cur.get("status") == "ok":
                        prev["times"] += cur["times"]
                        prev["cpu_times"] += cur.get("cpu_times", [])
                        prev["peak_bytes"] = max(prev["peak_bytes"], cur["peak_bytes"])
                    else:
                        res["methods"][m] = cur
        else:
            res = spawn(name, methods, a)
        size = a.size_of(name)
        _, shape = model_and_shape(name, size) if name not in RESNETS else (None, (3, size, size))
        res.update(shape=list(shape), points=a.points_of(name))
        res.setdefault("d_in", int(torch.tensor(shape).prod()))
        ref = None
        if not a.no_reference:
            f64 = ["streamed", "linearized"] if label == "full" else ["streamed"]
            rr = spawn(name, f64, a, dtype="float64", rounds=1, warmup=label == "full")
            rm = rr["methods"]["streamed"]
            ref = rm.get("values") if rm.get("status") == "ok" else None
            if label == "full":  # the float64 network's cost against float32 (issue 4: <= 2x on ResNet-34)
                for m in f64:
                    res["methods"][f"{m} (float64 network)"] = rr["methods"][m]
        res.update(
            ref=ref,
            flops=forward_flops(name, size),
            load=(load0, os.getloadavg()[0]),
            measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        )
        results[name] = res
        body = render(results, label, a, peak_note, memory_note, peak)
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"device": device_line(), "peak": peak, "peak_note": peak_note, "results": results}, f, indent=1)
        if not a.no_write:  # after every model, so a run cut short keeps what it measured
            write_section(section, body)
    print(body)
    return 0


NOTES = """Every fastgeom row is one public `fastgeom.logvol` call on all the points (set-up included);
"what ran" is its `Diagnostics` (engine, mode, final chunk). jacrev rows: `torch.func.jacrev` of the
batch-summed output, reduced by the same `fastgeom.linalg.factor`. randomized rows use common random
numbers and (probes x Golub-Kahan steps); passes = probes * (2 * steps - 1). |error| against fastgeom
`streamed` on the float64 network. Roofline = (1 + n) forward FLOPs per point (n = min(d_in, d_out);
randomized: 1 + its passes) / (time x peak FP32)."""

AUTO_NOTES = """auto / fastest: auto's median time over that of the fastest of dense, streamed and linearized
on this model. The verdict uses the CPU time of the worker process (one torch thread, no sampling
thread): on a machine shared with other jobs the wall time of a call also counts the time the process
waited for a core, so wall ratios of short calls swing by 1.5x and more. auto / streamed: where auto ran
the streamed engine both rows run the same code, so its distance from 1.00x is the noise left."""


if __name__ == "__main__":
    sys.exit(main())
