"""Shared helpers of the CLI tests (test_cli*.py, test_resume.py, test_distributed.py)."""

from __future__ import annotations

import os
import sys

import torch

import fastgeom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fastgeom.__file__)))

# A model file given to the CLI as path/to/net.py:FACTORY (exercises the file-path form of --model).
NET_SRC = '''
import os, time
import torch
from torch import nn


def mlp(width=7, d_in=5, d_out=3):
    """Tanh MLP d_in -> width -> width -> d_out in float64; layer '2' is a hidden layer (d_out=width)."""
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, d_out)).double()


class _Slow(nn.Module):
    def __init__(self, inner, delay):
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.inner(x)


def slow_mlp(delay=0.15):
    """mlp() that sleeps in every forward pass, so a run lasts long enough to be killed midway."""
    torch.manual_seed(0)
    return _Slow(mlp(), delay)


def conv(channels=4):
    """Tiny CNN on (3, 8, 8) images; 'act' is a (channels, 8, 8) feature map to pool."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.GELU()).double()


def dead():
    """A map whose Jacobian is exactly zero everywhere."""
    lin = nn.Linear(5, 3).double()
    nn.init.zeros_(lin.weight)
    return lin


def not_a_module():
    return 42
'''


def write_net(d) -> str:
    p = os.path.join(str(d), "net.py")
    with open(p, "w") as f:
        f.write(NET_SRC)
    return p


def env() -> dict:
    """Environment for subprocesses: this worktree first on the path, one thread, no tty."""
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


PY = sys.executable


def read_rows(path: str) -> list[str]:
    with open(path) as f:
        return f.read().split("\n")


def dense_logvol_spectrum(model, x: torch.Tensor, layer_index: int | None = None):
    """float64 reference: dense Jacobian by torch.func.jacrev of the (truncated) model, then SVD."""
    f = model if layer_index is None else model[: layer_index + 1]
    with torch.no_grad():
        J = torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x.double())
    s = torch.linalg.svdvals(J)
    return s.log().sum(-1).detach(), s.detach()
