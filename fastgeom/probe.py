"""Linear probe: multinomial logistic regression (L2, C = 1) on frozen backbone features.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

Features are standardised (mean/std of the training features) and sklearn's
``LogisticRegression(C=1, solver="lbfgs")`` is fitted on them (multinomial softmax loss
C * sum_n CE_n + 0.5 |W|^2, intercept not penalised). The fitted probe, scaler folded in, is a
plain ``nn.Linear`` (``probe.linear``), so ``probe.linear(backbone(x))`` gives differentiable
logits for decision boundaries and entropies on slices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(
    backbone: nn.Module, x: torch.Tensor, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """Backbone features (N, F) of images x (N, ...) in eval mode (training flags restored), float64 on CPU."""
    from .features import eval_mode

    dev = next(backbone.parameters()).device
    out = []
    with eval_mode(backbone):
        for i in tqdm(range(0, len(x), batch_size), desc="features", disable=not progress, leave=False):
            out.append(backbone(x[i : i + batch_size].to(dev)).flatten(1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


class LinearProbe:
    """Multinomial logistic regression with regularisation C (default 1) on standardised features.

    ``fit(features (N, F), labels (N,))``; then ``logits(features) -> (N, K)``, ``predict``,
    ``accuracy``, and ``linear``: an ``nn.Linear(F, K)`` (float64) computing the same logits.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-6):
        if not C > 0:
            raise ValueError(f"C (inverse regularisation strength) must be positive, got {C!r}")
        self.C, self.max_iter, self.tol = float(C), int(max_iter), float(tol)
        self.linear: nn.Linear | None = None
        self.classes_: np.ndarray | None = None
        self.converged: bool | None = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> LinearProbe:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        X = _as_2d(features, "features")
        y = torch.as_tensor(labels).reshape(-1).cpu().numpy()
        if len(y) != X.shape[0]:
            raise ValueError(f"features have {X.shape[0]} rows but labels have {len(y)}; they must match")
        if len(np.unique(y)) < 2:
            raise ValueError("the probe needs at least two classes in the labels")
        mu, sd = X.mean(0), X.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        clf = LogisticRegression(C=self.C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit((X - mu) / sd, y)
        self.converged = not any(issubclass(x.category, ConvergenceWarning) for x in w)
        W, b = clf.coef_, clf.intercept_
        if W.shape[0] == 1:  # sklearn's binary case: one row for class 1; as softmax logits [0, z]
            W, b = np.vstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
        self.classes_ = clf.classes_
        self.sklearn_ = clf
        lin = nn.Linear(X.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W / sd[None, :]))
            lin.bias.copy_(torch.from_numpy(b - (W / sd[None, :]) @ mu))
        lin.requires_grad_(False)
        self.linear = lin
        self.mean_, self.scale_ = mu, sd
        return self

    def _fitted(self) -> nn.Linear:
        if self.linear is None:
            raise RuntimeError("the probe is not fitted yet: call probe.fit(features, labels) first")
        return self.linear

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) float64 logits; class k of column k is ``classes_[k]``."""
        return self._fitted()(torch.as_tensor(_as_2d(features, "features")))

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.classes_)[self.logits(features).argmax(1)]

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(features) == torch.as_tensor(labels).reshape(-1).cpu()).double().mean())


def _as_2d(x, what: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be (N, F), got shape {a.shape}; flatten the backbone output first")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or Inf; check the backbone (diverged training?)")
    return a
