"""CLI throughput against one library call over the same points (issue 11, item 7: target >= 0.8x).

256 points of a small CNN (3x8x8 images, two 3x3 convs with GELU, the second pooled to 32 numbers),
``method="auto"``. The CLI runs in this process (``fastgeom.cli.main``, so torch's import is not
counted) with ``--batch-size 16``, writing a fresh CSV each time; the library is one
``fg.logvol(model, x)`` call over all 256 points. After one untimed warm-up pair, the two alternate,
``--repeats`` times each, and
the table gives their medians and the median of the per-pair ratios (library time / CLI time).

    python bench/cli_throughput.py --label "before: fg.logvol per batch"
    python bench/cli_throughput.py --label "after: one fg.Geometry per run" --repeats 5

Writes JSON (bench/out/cli_throughput.json, one entry per label) and the ``cli_throughput``
section of RESULTS.md (every label measured so far).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from torch import nn  # noqa: E402

N_POINTS, BATCH = 256, 16


def small_cnn():
    """The benchmark's model (also the CLI's --model FILE:small_cnn factory)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GELU(),
        nn.AvgPool2d(4),
        nn.Flatten(),
    )


def measure(repeats: int) -> dict:
    import fastgeom as fg
    from fastgeom import cli

    torch.manual_seed(1)
    x = torch.randn(N_POINTS, 3, 8, 8)
    d = tempfile.mkdtemp(prefix="fg_cli_bench_")
    pts = os.path.join(d, "x.pt")
    torch.save(x, pts)
    model = small_cnn().eval()
    t_cli, t_lib, ratios = [], [], []
    for r in range(-1, repeats):  # r = -1: warm-up (torch.func's first-use costs), not counted
        out = os.path.join(d, f"r{r}.csv")
        t0 = time.perf_counter()
        rc = cli.main(
            [
                "logvol",
                "--model",
                f"{os.path.abspath(__file__)}:small_cnn",
                "--points",
                pts,
                "--out",
                out,
                "--batch-size",
                str(BATCH),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        t1 = time.perf_counter()
        assert rc == 0, rc
        lv = fg.logvol(model, x, progress=False)
        t2 = time.perf_counter()
        from fastgeom.runio import read_csv

        got = torch.from_numpy(read_csv(out)[1][:, 1])
        err = float((got - lv).abs().max())
        assert err < 1e-6 * float(lv.abs().max()), f"CLI and library disagree by {err}"
        if r < 0:
            continue
        t_cli.append(t1 - t0)
        t_lib.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
        print(f"repeat {r}: CLI {t1 - t0:.2f} s, library {t2 - t1:.2f} s, ratio {ratios[-1]:.2f}", flush=True)
    return {
        "cli_s": statistics.median(t_cli),
        "lib_s": statistics.median(t_lib),
        "ratio": statistics.median(ratios),
        "repeats": repeats,
        "cli_all": t_cli,
        "lib_all": t_lib,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", required=True, help="what is measured, e.g. 'before: fg.logvol per batch'")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=os.path.join(HERE, "out", "cli_throughput.json"))
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from _results import device_line, write_section

    res = measure(a.repeats)
    res["device"] = device_line()
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    allres = json.load(open(a.json)) if os.path.exists(a.json) else {}
    allres[a.label] = res
    with open(a.json, "w") as f:
        json.dump(allres, f, indent=1)
    rows = [
        f"| {lab} | {r['cli_s']:.2f} | {N_POINTS / r['cli_s']:.1f} | {r['lib_s']:.2f} | {N_POINTS / r['lib_s']:.1f} "
        f"| {r['ratio']:.2f} | {r['repeats']} |"
        for lab, r in allres.items()
    ]
    body = "\n".join(
        [
            "## CLI throughput against one library call (`bench/cli_throughput.py`)",
            "",
            f"{N_POINTS} points of a small CNN (3x8x8 -> conv3x3(8)-GELU-conv3x3(8)-GELU-avgpool4, d_out = 32), "
            f"`method=auto`, float32; CLI in-process with `--batch-size {BATCH}` (fresh CSV each time) against one "
            "`fg.logvol(model, x)` over the same points, alternating, after one untimed pair. Ratio = library "
            "time / CLI time, median of the "
            "per-pair ratios (target >= 0.8).",
            "",
            "| CLI version | CLI s (median) | CLI points/s | library s | library points/s | ratio | repeats |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            res["device"]
            + " (a shared 2-core machine: absolute times drift with load; the ratio is measured in pairs)",
        ]
    )
    print(body)
    if not a.no_results:
        write_section("cli_throughput", body)


if __name__ == "__main__":
    main()
