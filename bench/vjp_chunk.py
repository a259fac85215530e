"""Per-chunk speed of the exact engines' inner loop, interleaved in one process (robust to load drift).

One chunk = K one-hot cotangents pulled back through the network at one point: the work that
``jacrev(chunk_size=K)`` and ``method="streamed"`` repeat d_out / K times (torch.func's vmapped VJP,
``AutogradPass``), against the linearised engine's hand-written transposed pass
(``Linearization.vjp``, built by ``linear_net.validated_linearize`` as ``method="linearized"`` does).
The two alternate, chunk after chunk, on the same cotangents; the table gives the median seconds
of each and the median of the per-pair ratios.

    python bench/vjp_chunk.py                       # ResNet-34 and ResNet-50, 32x32, K=64, 7 pairs
    python bench/vjp_chunk.py --archs resnet18 --size 16 --pairs 3    # a quick check
Writes JSON (--json, default bench/out/vjp_chunk.json) and the ``vjp_chunk`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402


def measure(arch: str, size: int, K: int, pairs: int, dtype=torch.float32, device="cpu") -> dict:
    from fastgeom.engine.linear_net import validated_linearize
    from fastgeom.engine.streamed import AutogradPass, _one_hot
    from fastgeom.features import FeatureMap
    from fastgeom.models import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(arch, activation="gelu", num_classes=None).eval().requires_grad_(False).to(device, dtype)
    x = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    fmap = FeatureMap(model)
    t0 = time.perf_counter()
    ag = AutogradPass(fmap, x, "reverse")
    t_ag_setup = time.perf_counter() - t0
    d_out = ag.feature.shape[1]
    t0 = time.perf_counter()
    lin = validated_linearize(fmap, x, d_out)(x, "reverse")  # the linearized engine's pass factory
    t_lin_setup = time.perf_counter() - t0
    C = _one_hot(K, 0, 1, d_out, dtype, x.device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    ref = ag.vjp(C)  # also warms both up
    err = float((lin.vjp(C) - ref).abs().max() / ref.abs().max())
    t_ag, t_lin = [], []
    for i in range(pairs):
        for _name, obj, ts in (("autograd", ag, t_ag), ("linearized", lin, t_lin))[:: 1 if i % 2 == 0 else -1]:
            sync()
            t0 = time.perf_counter()
            obj.vjp(C)
            sync()
            ts.append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(t_ag, t_lin)]
    return {
        "arch": arch,
        "size": size,
        "K": K,
        "pairs": pairs,
        "d_out": d_out,
        "dtype": str(dtype).split(".")[-1],
        "device": str(x.device),
        "autograd_s": t_ag,
        "linearized_s": t_lin,
        "median_autograd_s": statistics.median(t_ag),
        "median_linearized_s": statistics.median(t_lin),
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "setup_autograd_s": t_ag_setup,
        "setup_linearized_s": t_lin_setup,
        "rel_diff": err,
        "channels_last": lin.channels_last,
        "threads": torch.get_num_threads(),
    }


def table(rows: list[dict]) -> str:
    from _results import device_line

    out = [
        "## Exact engines' inner loop, one chunk of cotangents (`bench/vjp_chunk.py`)",
        "",
        device_line(),
        "",
        "| model | input | dtype | K | pairs | autograd VJP s (median) | linearized VJP s (median) | "
        "linearized / autograd (median of pairs) | range | setup s (autograd / linearized incl. validation) | "
        "rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['arch']} | 3x{r['size']}x{r['size']} | {r['dtype']} | {r['K']} | {r['pairs']} | "
            f"{r['median_autograd_s']:.3f} | {r['median_linearized_s']:.3f} | {r['median_ratio']:.2f}x | "
            f"{r['min_ratio']:.2f}-{r['max_ratio']:.2f} | "
            f"{r['setup_autograd_s']:.2f} / {r['setup_linearized_s']:.2f} | "
            f"{r['rel_diff']:.1e} |"
        )
    out += [
        "",
        'autograd = torch.func\'s vmapped VJP (what jacrev(chunk_size=K) and method="streamed" run per chunk); '
        'linearized = method="linearized" (BatchNorm folded, stored activation derivatives, fused residual '
        "steps, NHWC on CPU). The two alternate chunk by chunk in one process on the same one-hot cotangents; "
        "a full exact Jacobian is d_out / K chunks. rel. diff = max |difference| / max |VJP| (BatchNorm folding "
        "changes float32 rounding).",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet34,resnet50")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=os.path.join(HERE, "out", "vjp_chunk.json"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for arch in a.archs.split(","):
        rows.append(measure(arch, a.size, a.K, a.pairs, getattr(torch, a.dtype), a.device))
        print(
            json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_s") or k.startswith("median")}),
            flush=True,
        )
    md = table(rows)
    print(md)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
    if not a.no_write:
        from _results import write_section

        write_section("vjp_chunk" + ("_gpu" if a.device.startswith("cuda") else ""), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
