"""Sharding with torch.distributed: the batch plan, and torchrun with 2 gloo processes on CPU
against the single-process CSV (resuming a partial file on the way)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from _cli_helpers import PY, env, write_net
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgeom import cli
from fastgeom import distributed as D


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60), bs=st.integers(1, 9), world=st.integers(1, 5), done=st.sets(st.integers(0, 59), max_size=40)
)
def test_shards_cover_pending_batches_once(n, bs, world, done):
    done = {i for i in done if i < n}
    pending = D.pending_batches(n, bs, done)
    todo = {i for i in range(n) if i not in done}
    assert {i for b in pending for i in b} >= todo
    assert all(b in D.global_batches(n, bs) for b in pending)  # batches never depend on world or progress
    plan = D.rounds(pending, world)
    got = [D.my_batch(r, k) for r in plan for k in range(world)]
    got = [b for b in got if b is not None]
    assert got == pending  # every pending batch exactly once, in order
    assert all(len(r) == world for r in plan[:-1])


def test_single_process_context():
    ctx = D.init("cpu")
    assert (ctx.rank, ctx.world, ctx.distributed) == (0, 1, False)
    assert ctx.broadcast({"a": 1}) == {"a": 1} and ctx.gather(3) == [3]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_single(tmp_path, capsys):
    net = write_net(tmp_path)
    torch.save(torch.randn(23, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5)), tmp_path / "x.pt")

    def argv(out):
        return [
            "logvol",
            "--model",
            f"{net}:mlp",
            "--points",
            str(tmp_path / "x.pt"),
            "--layer",
            "2",
            "--out",
            str(out),
            "--batch-size",
            "3",
            "--diagnostics",
            "--device",
            "cpu",
        ]

    single = tmp_path / "single.csv"
    assert cli.main(argv(single) + ["--quiet"]) == 0
    # a partial file from an earlier run: one whole batch and one row of the second, so 7 batches
    # remain and rank 1 sits out the last round
    part = tmp_path / "dist.csv"
    lines = single.read_text().split("\n")
    part.write_text("\n".join(lines[:5]) + "\n")
    shutil.copy(str(single) + ".meta.json", str(part) + ".meta.json")
    r = subprocess.run(
        [
            PY,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "fastgeom",
            *argv(part),
            "--dist-backend",
            "gloo",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert part.read_bytes() == single.read_bytes()
    assert "rank 0/2" in r.stderr and "rank 1/2" in r.stderr and "pt/s" in r.stderr  # a bar per rank
    assert "19 computed now on 2 process(es), 4 already there" in r.stdout
