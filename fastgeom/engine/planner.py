"""Memory planner: from a byte budget to (points per batch, cotangents/tangents per chunk).

The per-(point x cotangent) cost is measured, not guessed: one forward pass of a single point under
``saved_tensors_hooks`` counts the bytes autograd saves (the activations a VJP/JVP keeps alive).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DEFAULT_CPU_BUDGET = 768 * 2**20
CPU_MAX_CHUNK = 64
CPU_CHUNK_BYTES = 64 * 2**20  # chunk working set below which the CPU cap does not apply


@dataclass
class Plan:
    mode: str  # "reverse" (VJPs, rows of J) or "forward" (JVPs, columns of J)
    chunk: int  # cotangents (reverse) or tangents (forward) per pass
    points: int  # points per batch
    budget: int  # bytes
    act_bytes: int  # saved-activation bytes for one point
    point_bytes: int = 0  # estimated bytes per point of a batch at this chunk (points = budget // point_bytes)
    unit: int = 0  # bytes per (point, direction) pair
    fixed: int = 0  # bytes per point independent of the chunk (activations, float64 J)


def is_oom(e: BaseException) -> bool:
    """True for CUDA and CPU allocator out-of-memory errors."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        "out of memory" in msg.lower() or "can't allocate memory" in msg.lower() or isinstance(e, MemoryError)
    )


def default_budget(device: torch.device) -> int:
    """Half the free GPU memory; on CPU FASTGEOM_CPU_BUDGET_MB or 768 MiB (at most a quarter of RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    env = os.environ.get("FASTGEOM_CPU_BUDGET_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = float("nan")
        if not (mb > 0 and mb < float("inf")):
            raise ValueError(f"FASTGEOM_CPU_BUDGET_MB must be a positive number of MiB, got {env!r}")
        return int(mb * 2**20)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 4 * DEFAULT_CPU_BUDGET
    return int(min(DEFAULT_CPU_BUDGET, ram // 4))


def saved_bytes_one_point(fmap, x1: torch.Tensor) -> tuple[int, int]:
    """Bytes autograd saves during one forward pass of fmap at x1 (1, *input_shape), not counting
    parameters and buffers (saved for the backward too, but shared by every point and cotangent)."""
    seen: dict[int, int] = {}
    fixed: set[int] = set()
    for v in getattr(fmap, "params", {}).values():
        try:
            fixed.add(v.untyped_storage().data_ptr())
        except Exception:  # noqa: BLE001
            pass

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            if key in fixed:
                return t
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except Exception:  # noqa: BLE001 - wrapper tensors without storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    xr = x1.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fmap(xr)
    total = max(sum(seen.values()), x1.numel() * x1.element_size())
    return total, max(seen.values(), default=total)


def check_budget(budget) -> None:
    """budget: None or a positive number of bytes."""
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 or budget == float("inf")
    ):
        raise ValueError(f"budget must be a positive number of bytes (or None for the default), got {budget!r}")


def plan(
    fmap,
    x: torch.Tensor,
    d_in: int,
    d_out: int,
    chunk_size: int | None = None,
    budget: int | None = None,
    mode: str | None = None,
    act_bytes: tuple[int, int] | None = None,
) -> Plan:
    """Choose mode (reverse when d_out <= d_in), chunk and point batch within `budget` bytes.

    ``act_bytes``: (total, largest) saved-activation bytes of one point if already measured."""
    mode = mode or ("reverse" if d_out <= d_in else "forward")
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be None, 'reverse' or 'forward', got {mode!r}")
    check_budget(budget)
    budget = int(budget or default_budget(x.device))
    act, biggest = act_bytes or saved_bytes_one_point(fmap, x[:1])
    passes = d_out if mode == "reverse" else d_in
    jac_bytes = d_in * d_out * (8 + x.element_size())  # float64 J plus one working copy
    # A (point, cotangent) pair holds gradient buffers only for the few layers being processed at a
    # time, not the whole forward: measured on CIFAR ResNets (jacrev chunk 64 on ResNet-50 needs about
    # a quarter of the saved activations per cotangent), so a unit is a quarter of the saved bytes,
    # and at least a few of the largest single activations. The points cost their activations once.
    unit = max(act // 4, 4 * biggest, 1)
    if chunk_size is None:
        chunk = max(1, min(passes, (budget - act) // unit))
        if x.device.type == "cpu":
            # CPU throughput peaks at moderate chunks and then falls (cache): bench/logvol.py (historical
            # section logvol_cpu) on
            # ResNet-34, 2 cores: chunk 64 took 14.0 s, 128 took 18.0 s, 268 took 19.7 s. Small models
            # (a chunk's working set far below that) take every direction at once, like jacrev.
            chunk = min(chunk, max(CPU_MAX_CHUNK, CPU_CHUNK_BYTES // unit))
    else:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        chunk = min(chunk_size, passes)
    point_bytes = max(unit * chunk + act + jac_bytes, 1)
    points = max(1, min(x.shape[0], budget // point_bytes))
    return Plan(
        mode=mode,
        chunk=chunk,
        points=points,
        budget=budget,
        act_bytes=act,
        point_bytes=point_bytes,
        unit=unit,
        fixed=act + jac_bytes,
    )
