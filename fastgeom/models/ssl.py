"""Self-supervised heads, losses and augmentations: Barlow Twins and SimCLR on a CIFAR ResNet backbone.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

Geometry is measured on the **backbone** (``model.backbone``, layer ``"avgpool"``), not the head.

* Barlow Twins (Zbontar et al. 2021), as in the paper's runs: projector = ONE linear layer
  (512 -> 256 for ResNet-34), loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with C the
  cross-correlation of the batch-standardised embeddings of two views, lambda = 0.005.
  Asymmetric augmentations: blur p 1.0 / 0.1, solarise p 0 / 0.2, colour jitter (0.4, 0.4, 0.2, 0.1)
  p 0.8, grayscale p 0.2, random resized crop + flip, ImageNet normalisation.
* SimCLR (Chen et al. 2020): the original experiment code reused the 10-way classifier as the
  projection, so its embeddings were 10-dimensional. Here the head is the SimCLR paper's MLP,
  Linear(F, F) - ReLU - Linear(F, 128), and the loss is NT-Xent on the L2-normalised head outputs
  with temperature 0.07 (the paper's value). Augmentations: SimCLR's CIFAR recipe (random resized
  crop, flip, colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, no blur), ImageNet normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _feature_dim(backbone: nn.Module) -> int:
    p = next(backbone.parameters())
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(2, 3, 32, 32, dtype=p.dtype, device=p.device))
        backbone.train(was)
    return out.reshape(2, -1).shape[1]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss of two views' embeddings z1, z2 (N, D), N >= 2: each dimension is standardised
    over the batch, C = z1n^T z2n / N (D, D), loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"barlow_twins_loss needs two (N, D) embeddings with N >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2n = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = z1n.T @ z2n / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's NT-Xent of two views' head outputs z1, z2 (N, D): cosine similarities / temperature over
    the 2N embeddings, each one's positive is its other view, the other 2N - 2 are negatives; mean over 2N."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"nt_xent_loss needs two (N, D) embeddings with N >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class BarlowTwins(nn.Module):
    """backbone (images -> (N, F) features, e.g. ``cifar_resnet(..., num_classes=None)``) + linear projector
    F -> proj_dim."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 256, lambd: float = 0.005):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Linear(_feature_dim(backbone), proj_dim)
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, proj_dim) embeddings."""
        return self.projector(self.backbone(x).flatten(1))

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(self(x1), self(x2), self.lambd)


class SimCLR(nn.Module):
    """backbone + MLP projection head Linear(F, F) - ReLU - Linear(F, proj_dim); NT-Xent at ``temperature``."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 128, temperature: float = 0.07):
        super().__init__()
        self.backbone = backbone
        f = _feature_dim(backbone)
        self.projector = nn.Sequential(nn.Linear(f, f), nn.ReLU(), nn.Linear(f, proj_dim))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, proj_dim) head outputs (unnormalised; the loss normalises them)."""
        return self.projector(self.backbone(x).flatten(1))

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(self(x1), self(x2), self.temperature)


def _blur(res: int, p: float):
    k = max(3, (res // 10) | 1)  # about 10% of the image side, odd (BYOL / Barlow Twins use 23 at 224)
    return v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=p) if p > 0 else v2.Identity()


def barlow_twins_augmentations(res: int = 32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The two asymmetric view transforms (float [0, 1] image (3, H, W) -> normalised tensor)."""

    def view(blur_p: float, sol_p: float):
        return v2.Compose(
            [
                v2.RandomResizedCrop(res, scale=(0.2, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                _blur(res, blur_p),
                v2.RandomSolarize(0.5, p=sol_p) if sol_p > 0 else v2.Identity(),
                v2.Normalize(mean, std),
            ]
        )

    return view(1.0, 0.0), view(0.1, 0.2)


def simclr_augmentations(res: int = 32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """SimCLR's CIFAR view transform, used for both views."""
    t = v2.Compose(
        [
            v2.RandomResizedCrop(res, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.Normalize(mean, std),
        ]
    )
    return t, t
