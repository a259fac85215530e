"""CIFAR-10 for the experiments, or a named offline stand-in.

Images are kept as uint8 tensors (N, 3, H, W); transforms (torchvision.transforms.v2) run per
sample in a ``TensorImages`` dataset. Real CIFAR-10 loads through torchvision from ``--data-root``
(``--download`` fetches it). Without it, quick modes use **procedural oriented gratings**: 32x32
colour images whose class is the grating orientation (10 orientations 9 degrees apart, random
frequency, phase, colours, noise and an occluding blob), so nets learn real but imperfect
boundaries. Orientations are 9 c degrees (c = 0..9, within [0, 90)), so a horizontal flip (180 - 9 c)
never turns one class into another and the standard flip augmentation keeps labels valid. Every figure title
and results.json names the data set that was used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STANDIN_NAME = "procedural oriented gratings (offline stand-in, NOT CIFAR-10)"


@dataclass
class ImageData:
    """uint8 images (N, 3, res, res) and int64 labels (N,), plus a name for titles/results."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple
    standin: bool


def procedural_gratings(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images (n, 3, size, size) and labels (n,): class c is a grating at orientation 9 c degrees."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    theta = y.double() * math.pi / 20 + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)
    freq = 2.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64)  # cycles per image
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    ax = torch.linspace(-0.5, 0.5, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    proj = torch.cos(theta)[:, None, None] * xx + torch.sin(theta)[:, None, None] * yy
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    c0, c1 = (
        torch.rand(n, 3, 1, 1, generator=g, dtype=torch.float64),
        torch.rand(n, 3, 1, 1, generator=g, dtype=torch.float64),
    )
    img = c0 + (c1 - c0) * wave[:, None]
    # an occluding blob of random colour, and pixel noise
    cx, cy = (
        torch.rand(n, generator=g, dtype=torch.float64) - 0.5,
        torch.rand(n, generator=g, dtype=torch.float64) - 0.5,
    )
    r = 0.08 + 0.12 * torch.rand(n, generator=g, dtype=torch.float64)
    blob = (((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) < r[:, None, None] ** 2)[:, None]
    img = torch.where(blob, torch.rand(n, 3, 1, 1, generator=g, dtype=torch.float64), img)
    img = img + 0.08 * torch.randn(img.shape, generator=g, dtype=torch.float64)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def _resize(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-1] == res:
        return x
    out = F.interpolate(x.float(), size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def cifar_missing_message(root: str) -> str:
    return (
        f"CIFAR-10 was not found under {os.path.abspath(root)!r} (torchvision expects "
        f"{os.path.join(root, 'cifar-10-batches-py')}). Fix: add --download (needs network) or put the "
        "python version (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) unpacked there and pass "
        "--data-root; quick modes can instead use the offline stand-in with --standin."
    )


def load_cifar10(root: str, download: bool = False) -> tuple:
    """(train_x, train_y, test_x, test_y) as uint8 / int64 tensors from torchvision's CIFAR10."""
    from torchvision.datasets import CIFAR10

    try:
        tr = CIFAR10(root, train=True, download=download)
        te = CIFAR10(root, train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(cifar_missing_message(root)) from e
    conv = lambda ds: (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))  # noqa: E731
    return (*conv(tr), *conv(te))


def load_data(
    root: str,
    download: bool,
    quick: bool,
    standin: bool,
    n_train: int | None,
    n_test: int | None,
    res: int = 32,
    seed: int = 0,
) -> ImageData:
    """CIFAR-10 (subsampled to n_train/n_test, resized to res) or, in quick mode when CIFAR-10 is absent
    or ``standin`` is set, the procedural stand-in. Full mode never falls back: it raises with the fix."""
    use_standin = standin
    if not standin:
        try:
            trx, trY, tex, teY = load_cifar10(root, download)
        except FileNotFoundError:
            if not quick:
                raise
            print(
                f"[data] CIFAR-10 not under {root!r}: using {STANDIN_NAME}. Pass --data-root/--download for real data."
            )
            use_standin = True
    if use_standin:
        trx, trY = procedural_gratings(n_train or 5000, seed=seed)
        tex, teY = procedural_gratings(n_test or 1000, seed=seed + 10_000)
        name, classes = STANDIN_NAME, tuple(f"{9 * c} deg" for c in range(10))
    else:
        g = torch.Generator().manual_seed(seed)
        if n_train:
            i = torch.randperm(len(trY), generator=g)[:n_train]
            trx, trY = trx[i], trY[i]
        if n_test:
            i = torch.randperm(len(teY), generator=g)[:n_test]
            tex, teY = tex[i], teY[i]
        name, classes = "CIFAR-10", CIFAR_CLASSES
    if res != 32:
        name = f"{name}, downsampled to {res}x{res}"
    return ImageData(name, _resize(trx, res), trY, _resize(tex, res), teY, classes, use_standin)


class TensorImages(Dataset):
    """(transform(image), label) over a uint8 image tensor (N, 3, H, W); transform sees float [0, 1].
    With ``views=2`` returns (transform_a(img), transform_b(img), label) for self-supervised training."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform, transform_b=None):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"TensorImages needs uint8 images (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        self.x, self.y, self.t, self.tb = x, y, transform, transform_b

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = self.x[i].float() / 255
        if self.tb is None:
            return self.t(img), self.y[i]
        return self.t(img), self.tb(img), self.y[i]


def normalize(x: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float (the input space where geometry is measured)."""
    m = torch.tensor(mean, dtype=dtype)[:, None, None]
    s = torch.tensor(std, dtype=dtype)[:, None, None]
    return (x.to(dtype) / 255 - m) / s


def supervised_transform(res: int, mean=CIFAR_MEAN, std=CIFAR_STD):
    """RandomCrop(res, padding res/8) + horizontal flip + normalisation (the paper's CIFAR training)."""
    return v2.Compose(
        [v2.RandomCrop(res, padding=max(1, res // 8)), v2.RandomHorizontalFlip(), v2.Normalize(mean, std)]
    )


def load_for(args, sz: dict) -> ImageData:
    """``load_data`` with a driver's command-line options (data root, download, --full, --standin, seed)
    and its size table entry (n_train, n_test, res)."""
    return load_data(
        args.data_root,
        args.download,
        quick=not args.full,
        standin=args.standin,
        n_train=sz["n_train"],
        n_test=sz["n_test"],
        res=sz["res"],
        seed=args.seed,
    )
