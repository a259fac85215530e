"""fastgeom: Riemannian geometry of neural network feature maps.

Exact log volume elements and spectra of any PyTorch model's layer (``logvol``, ``spectrum``,
``jacobian``, ``metric``), closed-form shallow-network geometry (``fastgeom.shallow``,
``fastgeom.nngp``), and backends/availability (``info``). Submodules are imported lazily.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .api import jacobian, logvol, metric, spectrum  # noqa: E402
from .diagnostics import Diagnostics, NonFiniteWarning, PrecisionWarning, RankDeficiencyWarning  # noqa: E402
from .geometry import Geometry  # noqa: E402
from .info import info  # noqa: E402

_LAZY = (
    "shallow",
    "nngp",
    "slices",
    "plot",
    "models",
    "randomized",
    "linalg",
    "engine",
    "features",
    "cli",
    "distributed",
    "data",
    "train",
    "demo",
    "ops",
    "surfaces",
    "paths",
)


_LAZY_FUNCS = {
    "gaussian_curvature": "surfaces",
    "scalar_curvature": "surfaces",
    "path_length": "paths",
    "geodesic": "paths",
}


def __getattr__(name):
    if name in _LAZY_FUNCS:
        return getattr(importlib.import_module(f".{_LAZY_FUNCS[name]}", __name__), name)
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastgeom' has no attribute {name!r}")


__all__ = [
    "Geometry",
    "logvol",
    "spectrum",
    "jacobian",
    "metric",
    "info",
    "Diagnostics",
    "RankDeficiencyWarning",
    "PrecisionWarning",
    "NonFiniteWarning",
    "__version__",
    *_LAZY,
    *_LAZY_FUNCS,
]
