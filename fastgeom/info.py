"""`fastgeom.info()`: versions, which backends are built and usable here, and the build metadata."""

from __future__ import annotations

import platform
import shutil
import subprocess

import torch

from ._ext import backend_usable, ext


def _cmd_version(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        return "not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        return lines[-1] if cmd == "nvcc" else lines[0]
    except Exception as e:  # noqa: BLE001
        return f"error: {e}"


def info() -> dict:
    """Return a dict describing this installation (also printed by ``python -m fastgeom info``)."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    from . import __version__

    d = {
        "fastgeom": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "triton": triton_version,
        "compiler": _cmd_version("c++"),
        "nvcc": _cmd_version("nvcc"),
        "extension": {"loaded": ext.ok, "error": ext.error, "build": ext.build_info()},
        "backends": {},
    }
    for b in ("torch", "cpp", "cuda", "triton"):
        ok, why = backend_usable(b)
        d["backends"][b] = {"usable": ok, "detail": why}
    d["ops"] = _op_choices()
    return d


def _op_choices() -> dict:
    """{op: {device type: the implementation ``backend="auto"`` runs for float64 tensors there}}."""
    from .activations import get
    from .ops import linearized, logdet, shallow, svd

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    ctx = {shallow.GEOMETRY.name: {"act": get("tanh"), "d": 2, "n": 16}}
    return {
        op.name: {dev.type: op.pick("auto", dev, torch.float64, **ctx.get(op.name, {})) for dev in devices}
        for op in logdet.OPS + linearized.OPS + shallow.OPS + svd.OPS
    }


def format_info(d: dict | None = None) -> str:
    d = info() if d is None else d
    lines = [
        f"fastgeom {d['fastgeom']}  (python {d['python']})",
        f"torch {d['torch']}  cuda build: {d['torch_cuda']}  cuda available: {d['cuda_available']}",
        f"device: {d['device']}",
        f"triton: {d['triton']}",
        f"c++ compiler: {d['compiler']}",
        f"nvcc: {d['nvcc']}",
        "extension fastgeom._C: "
        + ("loaded" if d["extension"]["loaded"] else f"NOT loaded ({d['extension']['error']})"),
    ]
    for k, v in d["extension"]["build"].items():
        lines.append(f"  build.{k}: {v}")
    lines.append("backends:")
    for b, s in d["backends"].items():
        lines.append(f"  {b:7s} {'usable' if s['usable'] else 'unusable':9s} {s['detail']}")
    lines.append("ops (what backend='auto' runs, float64):")
    for op, picks in d.get("ops", {}).items():
        lines.append(f"  {op:17s} " + "  ".join(f"{dev}: {impl}" for dev, impl in picks.items()))
    return "\n".join(lines)
