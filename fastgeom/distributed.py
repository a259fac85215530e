"""Sharding a run over processes with torch.distributed (torchrun): NCCL on GPUs, gloo on CPU.

The points are cut into fixed global batches ``[b * bs, (b + 1) * bs)`` that do not depend on the
number of processes or on what a previous run finished, so every point is always computed in the
same batch, whatever the world size: K processes give bit-for-bit the rows one process gives.
Batches that still have missing indices are dealt out in rounds, batch ``r * K + k`` to rank ``k``
in round ``r``; after each round rank 0 gathers the rows and appends them to the CSV (the only
writer, so the output needs no shared file system). A killed run loses at most the round in flight.

Multi-node runs use torchrun's rendezvous (see docs/CLI.md); nothing here depends on the node count.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Context:
    """This process's place in the run: rank, world size, local rank, device, backend (None if single)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def broadcast(self, obj: Any) -> Any:
        """`obj` of rank 0, on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._obj_device)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """List of every rank's `obj` on rank 0 (rank order), None on the others."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _obj_device(self):
        return self.device if self.backend == "nccl" else None


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local rank> when CUDA is usable, else cpu; 'cuda' -> cuda:<local rank>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available here; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None


def init(device: str = "auto", backend: str = "auto", timeout_min: float = 60.0) -> Context:
    """Join the torchrun process group if WORLD_SIZE > 1 (backend 'auto': nccl on CUDA, else gloo)."""
    rank, world, local = env_world()
    dev = pick_device(device, local)
    if world <= 1:
        return Context(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"--dist-backend {backend!r}: choose auto, nccl or gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kw = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min), **kw)
    return Context(dist.get_rank(), dist.get_world_size(), local, dev, backend)


def global_batches(n: int, batch_size: int) -> list[range]:
    """The fixed batches [b * bs, min(n, (b + 1) * bs)) covering 0..n-1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def pending_batches(n: int, batch_size: int, done: set[int] | frozenset) -> list[range]:
    """The global batches with at least one index not in `done` (recomputed whole, written partly)."""
    return [b for b in global_batches(n, batch_size) if any(i not in done for i in b)]


def rounds(batches: Sequence, world: int) -> list[list]:
    """Deal batches out in rounds of `world`: round r holds batches r*world .. r*world+world-1."""
    return [list(batches[s : s + world]) for s in range(0, len(batches), world)]


def my_batch(round_batches: Sequence, rank: int):
    """This rank's batch in a round, or None when the (last) round has fewer batches than ranks."""
    return round_batches[rank] if rank < len(round_batches) else None
