"""Write a section of bench/RESULTS.md between its BEGIN/END markers (other sections untouched)."""

from __future__ import annotations

import os
import platform
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def device_line() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "cpu")
    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = "none"
    return (
        f"device: {dev} ({os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}); "
        f"torch {torch.__version__}; triton {tv}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def write_section(name: str, body: str, path: str = RESULTS) -> None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
