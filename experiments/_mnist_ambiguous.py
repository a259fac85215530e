"""An ambiguous-digit stand-in for Dirty-MNIST built from real digits.

Dirty-MNIST's AmbiguousMNIST (Mukhoti et al., arXiv 2102.11582) was made by decoding points of a
VAE's latent space and keeping the decoded digits that an ensemble of classifiers finds ambiguous.
:func:`make` follows that construction on the digits the MNIST driver trains on:

1. a small VAE (784 -> h -> latent k -> h -> 784, Bernoulli decoder) is trained on the real
   training digits;
2. for random pairs of training digits of different classes, the latent means are mixed,
   z = (1 - t) mu_a + t mu_b with t uniform in [0.3, 0.7] (points between class clusters), and decoded;
3. an ensemble of small MLP classifiers (different seeds, trained on the same real digits) scores
   every decoded digit; the digits with the highest normalised predictive entropy of the ensemble
   mean are kept (at least ``min_entropy``), with the label the ensemble finds most likely.

:func:`reconstruct` decodes clean test digits through the same VAE: clean digits that went through
the decoder, the control for the decoder's smoothing.
Everything here is float32 and seeded; the digits returned are float64 in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """784 -> hidden -> (mu, log var) in R^latent -> hidden -> 784 Bernoulli logits."""

    def __init__(self, d: int = 784, hidden: int = 256, latent: int = 8):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def encode(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z):
        return torch.sigmoid(self.dec(z))

    def loss(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
        return (rec + kl) / x.shape[0]


def _fit(model, x, y, epochs, lr, batch, seed, loss_fn, progress, desc):
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model, x[idx], None if y is None else y[idx]).backward()
            opt.step()
    model.eval()
    return model


def train_vae(x: torch.Tensor, epochs: int, seed: int = 0, progress: bool = False, **kw) -> VAE:
    torch.manual_seed(seed)
    return _fit(
        VAE(x.shape[1], **kw), x.float(), None, epochs, 1e-3, 128, seed, lambda m, xb, _: m.loss(xb), progress, "VAE"
    )


def train_ensemble(
    x: torch.Tensor,
    y: torch.Tensor,
    members: int,
    epochs: int,
    seed: int = 0,
    hidden: int = 128,
    progress: bool = False,
) -> list[nn.Module]:
    """``members`` MLPs 784 -> hidden -> 10 (ReLU), each from its own seed."""
    out = []
    for k in range(members):
        torch.manual_seed(seed + 1000 + k)
        net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 10))
        out.append(
            _fit(
                net,
                x.float(),
                y,
                epochs,
                1e-3,
                128,
                seed + 1000 + k,
                lambda m, xb, yb: F.cross_entropy(m(xb), yb),
                progress,
                f"ensemble {k + 1}/{members}",
            )
        )
    return out


@torch.no_grad()
def ensemble_probs(ensemble, x: torch.Tensor) -> torch.Tensor:
    """(members, N, 10) softmax outputs."""
    return torch.stack([F.softmax(m(x.float()), -1) for m in ensemble]).double()


def normalized_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum(-1) / math.log(p.shape[-1])


@torch.no_grad()
def make(
    x_train,
    y_train,
    n: int,
    *,
    vae: VAE,
    ensemble,
    seed: int = 0,
    candidates: int = 8,
    min_entropy: float = 0.2,
    t_range=(0.3, 0.7),
) -> dict:
    """``n`` ambiguous digits: decode ``candidates * n`` latent mixtures of training digits of two
    different classes, keep the ``n`` of highest ensemble predictive entropy (those at least
    ``min_entropy``). Returns dict: x (m, 784) float64, label (m,) ensemble's most likely class,
    classes (m, 2) source classes, entropy (m,), disagree (m,) members' argmax not unanimous;
    m <= n (fewer if too few candidates pass ``min_entropy``)."""
    g = torch.Generator().manual_seed(seed)
    mu, _ = vae.encode(x_train.float())
    m = candidates * n
    ia = torch.randint(x_train.shape[0], (m,), generator=g)
    ib = torch.randint(x_train.shape[0], (m,), generator=g)
    keep = y_train[ia] != y_train[ib]
    ia, ib = ia[keep], ib[keep]
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(ia.numel(), 1, generator=g)
    dec = vae.decode((1 - t) * mu[ia] + t * mu[ib]).double()
    P = ensemble_probs(ensemble, dec)
    H = normalized_entropy(P.mean(0))
    order = torch.argsort(H, descending=True)
    order = order[H[order] >= min_entropy][:n]
    votes = P.argmax(-1)[:, order]
    return {
        "x": dec[order],
        "label": P.mean(0)[order].argmax(-1),
        "entropy": H[order],
        "classes": torch.stack([y_train[ia[order]], y_train[ib[order]]], 1),
        "disagree": (votes != votes[0:1]).any(0),
    }


@torch.no_grad()
def reconstruct(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """Decoded latent means of ``x``: (N, 784) float64."""
    return vae.decode(vae.encode(x.float())[0]).double()
