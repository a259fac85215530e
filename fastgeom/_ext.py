"""Availability of the compiled extension and Triton, kept as data (a failed load is reported, not raised).

``ext.ok`` says whether fastgeom._C loaded and ``ext.error`` why not; ``backend_usable`` answers per backend
family for ``fastgeom.info()``. Per-op choices (and the errors for an explicit backend that cannot run)
live in ``fastgeom.ops.dispatch``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings
from typing import Any

import torch

INSTALL_HINT = (
    "reinstall with the extension built: `pip install --no-build-isolation .` (C++), "
    "`FASTGEOM_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation .` (CUDA); "
    "see the install table in README.md"
)


class _Ext:
    def __init__(self) -> None:
        self.module: Any = None
        self.error: str | None = None
        if os.environ.get("FASTGEOM_DISABLE_EXT", "0") == "1":
            self.error = "disabled by FASTGEOM_DISABLE_EXT=1"
            return
        try:
            self.module = importlib.import_module("fastgeom._C")
        except Exception as e:  # noqa: BLE001 - any load failure is reported by info()
            self.error = f"{type(e).__name__}: {e}"

    @property
    def ok(self) -> bool:
        return self.module is not None

    @property
    def with_cuda(self) -> bool:
        return self.ok and bool(self.module.build_info().get("with_cuda", False))

    def build_info(self) -> dict:
        return dict(self.module.build_info()) if self.ok else {}

    def has_op(self, name: str) -> bool:
        return self.ok and hasattr(torch.ops.fastgeom, name)


ext = _Ext()

_JVP_DECOMPOSITIONS = "torch._decomp.decompositions_for_jvp"


class _QuietJvpDecompositions(importlib.abc.MetaPathFinder):
    """The first forward-mode call (``torch.func.jvp``) imports torch's ``decompositions_for_jvp``, which
    runs ``torch.jit.script`` 18 times and so prints torch's own deprecation FutureWarning about it; that
    one import runs with the warning silenced (a user's own ``torch.jit.script`` still warns)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _JVP_DECOMPOSITIONS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning
                )
                exec_module(module)

        spec.loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


if _JVP_DECOMPOSITIONS not in sys.modules:
    sys.meta_path.insert(0, _QuietJvpDecompositions())


def triton_status() -> tuple[bool, str]:
    """(usable, detail): Triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"not importable ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1, CPU)"
    return (
        False,
        f"triton {triton.__version__} installed, but no CUDA device (set TRITON_INTERPRET=1 to interpret on CPU)",
    )


def backend_usable(backend: str, device: torch.device | None = None) -> tuple[bool, str]:
    """Whether `backend` ("torch", "cpp", "cuda", "triton") can run here (on `device` if given)."""
    if backend == "torch":
        return True, "always"
    if backend == "cpp":
        return (ext.ok, "fastgeom._C loaded" if ext.ok else f"fastgeom._C not loaded: {ext.error}")
    if backend == "cuda":
        if not ext.ok:
            return False, f"fastgeom._C not loaded: {ext.error}"
        if not ext.with_cuda:
            return False, "fastgeom._C was built without CUDA"
        if not torch.cuda.is_available():
            return False, "no CUDA device visible"
        return True, "fastgeom._C built with CUDA"
    if backend == "triton":
        return triton_status()
    raise ValueError(f"unknown backend {backend!r}; choose one of 'torch', 'cpp', 'cuda', 'triton', 'auto'")
