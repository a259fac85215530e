"""Small models and training loops of the paper's toy and MNIST experiments (MATH.md 7, EXPERIMENTS-REFERENCE).

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

* :class:`ShallowNet` ``d -> n -> c``: f(x) = lin2(sigma(lin1 x)) / sqrt(n), weights and biases
  N(0, 1) by default (the original code); its geometry is that of Phi(x) = sigma(W1 x + b1)/sqrt(n),
  i.e. ``fastgeom.shallow.*(net.W, net.b, x, net.activation)`` or ``fastgeom.logvol(net, x,
  layer="act", normalize=True)``.
* :class:`DeepMLP` widths ``[d, n1, ..., nL, c]``: h_1 = sigma(W_1 x + b_1),
  h_l = sigma((W_l h_{l-1} + b_l)/sqrt(n_{l-1})), out = (W h_L + b)/sqrt(n_L) (MATH.md 7.2); the
  hidden layers are modules ``acts.0``, ``acts.1``, ...
* :class:`MLPClassifier` ``784 -> n -> 10`` with PyTorch's default init (the MNIST net); layer ``act``.

Training: :func:`full_batch_epoch` (one SGD step on all points, as the toy tasks) and
:func:`minibatch_epoch` (shuffled minibatches, as MNIST).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


def _act(name: str) -> nn.Module:
    if name == "erf":
        return _Erf()
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(sorted(list(_ACTS) + ['erf']))}")
    return _ACTS[name]()


class _Erf(nn.Module):
    def forward(self, z):
        return torch.erf(z)


class ShallowNet(nn.Module):
    """f(x) = lin2(sigma(lin1 x)) / sqrt(n); ``x`` (B, d) -> logits (B, c). ``init="normal"``: all
    weights and biases N(0, 1) (the original code), ``"torch"``: nn.Linear's default."""

    def __init__(self, d: int = 2, n: int = 20, c: int = 2, activation: str = "sigmoid", init: str = "normal"):
        super().__init__()
        self.activation, self.n = activation, n
        self.lin1 = nn.Linear(d, n)
        self.act = _act(activation)
        self.lin2 = nn.Linear(n, c)
        if init == "normal":
            for p in self.parameters():
                nn.init.normal_(p)
        elif init != "torch":
            raise ValueError(f"init must be 'normal' or 'torch', got {init!r}")

    @property
    def W(self) -> torch.Tensor:
        """(n, d) first-layer weights (detached)."""
        return self.lin1.weight.detach()

    @property
    def b(self) -> torch.Tensor:
        """(n,) first-layer biases (detached)."""
        return self.lin1.bias.detach()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x))) / math.sqrt(self.n)


class _Scale(nn.Module):
    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


class DeepMLP(nn.Module):
    """Widths [d, n1, ..., nL, c] with 1/sqrt(fan-in) scaling after the first layer (MATH.md 7.2);
    hidden feature maps are ``acts.<l>`` (l = 0..L-1); N(0, 1) init."""

    def __init__(self, widths=(2, 8, 8, 8, 2), activation: str = "sigmoid", init: str = "normal"):
        super().__init__()
        widths = list(widths)
        if len(widths) < 3:
            raise ValueError(f"widths must be [d, n1, ..., c] with at least one hidden layer, got {widths}")
        self.widths = widths
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.scales = nn.ModuleList(_Scale(1.0 if i == 0 else 1 / math.sqrt(widths[i])) for i in range(len(widths) - 1))
        self.acts = nn.ModuleList(_act(activation) for _ in widths[1:-1])
        if init == "normal":
            for p in self.parameters():
                nn.init.normal_(p)

    def hidden_layers(self) -> list[str]:
        return [f"acts.{i}" for i in range(len(self.acts))]

    def forward(self, x):
        h = x
        for i, act in enumerate(self.acts):
            h = act(self.scales[i](self.lins[i](h)))
        return self.scales[-1](self.lins[-1](h))


class MLPClassifier(nn.Module):
    """``x`` (B, *shape) flattened -> lin1 -> sigma (module ``act``) -> lin2 -> logits (B, c);
    PyTorch's default init (the MNIST net: 784 -> 2000 -> 10)."""

    def __init__(self, d: int = 784, n: int = 2000, c: int = 10, activation: str = "sigmoid"):
        super().__init__()
        self.lin1 = nn.Linear(d, n)
        self.act = _act(activation)
        self.lin2 = nn.Linear(n, c)

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x.flatten(1))))


def full_batch_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step of cross-entropy on all points; returns the loss."""
    model.train()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def minibatch_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> float:
    """One pass of shuffled minibatches of cross-entropy; returns the mean loss."""
    model.train()
    perm = torch.randperm(x.shape[0], generator=generator)
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * idx.numel()
    return total / x.shape[0]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Fraction of points whose argmax logit equals the label."""
    model.eval()
    hits = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    return hits / max(x.shape[0], 1)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs in eval mode, batched: (B, c)."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
