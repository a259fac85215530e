"""Data for the experiments: toy tasks (MATH.md 7.1-7.2), MNIST, Dirty-MNIST, and the offline
stand-ins quick mode uses.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

* :func:`xor_data`, :func:`sinusoid_data` and :func:`sinusoid_boundary` (re-exported from ``fastgeom.sinusoid``).
* :func:`mnist` loads MNIST through ``torchvision.datasets.MNIST`` under ``root`` (``download=True``
  fetches it); missing files raise :class:`DatasetMissing` saying how to get them.
* :func:`digits_standin`: scikit-learn's bundled 8x8 handwritten digits (1797 images, offline),
  upsampled bilinearly to 28x28 — the quick-mode MNIST stand-in (named by ``DIGITS_STANDIN``).
* :func:`ambiguous_mnist` loads Dirty-MNIST's ambiguous digits through the ``ddu_dirty_mnist``
  package; :func:`blend_ambiguous` makes the quick-mode stand-in (two digits of different classes
  averaged).

Images are returned as float64 tensors (N, 784) in [0, 1] with int64 labels (N,).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .sinusoid import sinusoid_boundary, sinusoid_data  # noqa: F401  (re-exported; home: fastgeom/sinusoid.py)

DIGITS_STANDIN = "sklearn 8x8 digits upsampled to 28x28 (offline MNIST stand-in)"
BLEND_STANDIN = "blends of two digits of different classes (offline Dirty-MNIST stand-in)"


class DatasetMissing(FileNotFoundError):
    """A dataset is not on disk (or its loader package is not installed); the message says how to get it."""


def xor_data(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The four XOR points (4, 2) and labels y = 1[x1 x2 < 0] (MATH.md 7.1)."""
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=dtype)
    return x, (x[:, 0] * x[:, 1] < 0).long()


def _flat01(data: torch.Tensor) -> torch.Tensor:
    x = data.reshape(data.shape[0], -1).to(torch.float64)
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
            "*-ubyte files from http://yann.lecun.com/exdb/mnist/) under that root. Quick mode (--quick) needs no "
            "download: it uses " + DIGITS_STANDIN + ".") from None
    return _flat01(ds.data), ds.targets.long()


def digits_standin(size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits, bilinearly upsampled to size x size: ((1797, size^2) in [0, 1], labels)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    img = torch.as_tensor(d.images, dtype=torch.float64)[:, None] / 16.0
    up = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return up.reshape(up.shape[0], -1), torch.as_tensor(d.target, dtype=torch.long)


def split(x: torch.Tensor, y: torch.Tensor, train_fraction: float = 0.75, seed: int = 0):
    """Random (x_train, y_train, x_test, y_test) split (the paper's 75/25)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    k = int(round(train_fraction * x.shape[0]))
    return x[perm[:k]], y[perm[:k]], x[perm[k:]], y[perm[k:]]


def ambiguous_mnist(root: str, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirty-MNIST's ambiguous test digits (AmbiguousMNIST, test split) via the ``ddu_dirty_mnist``
    package: ((N, 784) float64 in [0, 1], (N,) labels)."""
    try:
        import ddu_dirty_mnist
    except ImportError:
        raise DatasetMissing(
            "Dirty-MNIST needs its loader package: `pip install ddu_dirty_mnist` (the dataset of Mukhoti et al., "
            "arXiv 2102.11582), then rerun with --download (or place its AmbiguousMNIST files under --data-root "
            f"{os.path.abspath(root)!r}). Quick mode uses " + BLEND_STANDIN + " instead.") from None
    try:
        ds = ddu_dirty_mnist.AmbiguousMNIST(root, train=False, download=download, normalize=False,
                                            noise_stddev=0, device="cpu")
    except (RuntimeError, OSError) as e:
        raise DatasetMissing(
            f"AmbiguousMNIST not found under --data-root {os.path.abspath(root)!r} ({e}); rerun with --download "
            "on a machine with internet.") from None
    return _flat01(ds.data), torch.as_tensor(ds.targets).long()


def blend_ambiguous(x: torch.Tensor, y: torch.Tensor, n: int, classes=None, seed: int = 0,
                    weight: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
