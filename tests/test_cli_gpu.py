"""GPU checks of the CLI (marked gpu, skipped without CUDA): a CUDA run against the CPU file, and
torchrun with NCCL over two GPUs against one GPU (skipped with fewer than two GPUs)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from _cli_helpers import PY, env, write_net

from fastgeom import cli
from fastgeom.runio import read_csv

pytestmark = pytest.mark.gpu


def _setup(tmp_path):
    net = write_net(tmp_path)
    torch.save(torch.randn(29, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11)), tmp_path / "x.pt")
    return lambda out, dev: [
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
        "4",
        "--device",
        dev,
        "--quiet",
    ]


def _close(a_path, b_path):
    (ca, a), (cb, b) = read_csv(str(a_path)), read_csv(str(b_path))
    assert ca == cb and a.shape == b.shape
    assert (a[:, [0, 2]] == b[:, [0, 2]]).all()
    np.testing.assert_allclose(a[:, 1], b[:, 1], rtol=1e-11, atol=1e-11)


def test_cuda_matches_cpu(tmp_path):
    argv = _setup(tmp_path)
    assert cli.main(argv(tmp_path / "cpu.csv", "cpu")) == 0
    assert cli.main(argv(tmp_path / "gpu.csv", "cuda")) == 0
    _close(tmp_path / "cpu.csv", tmp_path / "gpu.csv")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_nccl_two_gpus(tmp_path):
    argv = _setup(tmp_path)
    assert cli.main(argv(tmp_path / "one.csv", "cuda")) == 0
    r = subprocess.run(
        [
            PY,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "fastgeom",
            *argv(tmp_path / "two.csv", "cuda"),
            "--dist-backend",
            "nccl",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _close(tmp_path / "one.csv", tmp_path / "two.csv")
