"""One dispatch mechanism for every compiled op: ordered candidates, availability with reasons, a record.

An :class:`Op` holds an ordered list of :class:`Impl` candidates (fastest first, the torch reference
last). Each candidate says whether it can run for a given device and dtype (plus op-specific context
such as the activation of the shallow op) and, when it cannot, why. ``backend="auto"`` runs the first
available candidate that auto may take; an explicit backend (``"cpp"``, ``"cuda"``, ``"triton"``,
``"torch"``) runs the first available candidate that serves it, and raises ``RuntimeError`` naming
every reason when none can (never a silent fallback); an unknown backend raises ``ValueError``.

Every dispatched call writes ``{op name: impl name}`` into the dicts of the enclosing
:func:`recording` blocks (contextvar-based, so nestable and thread/async safe)::

    with fastgeom.ops.dispatch.recording() as ran:
        fg.logvol(model, x)
    ran  # e.g. {"qrcp": "cpp", "logdiag_sum": "cpp"}

If one op ran with two implementations inside a block, the value lists both, in order of first
use (``"cpp,torch"``).

Registering an op (one module per op folder, e.g. ``fastgeom/ops/svd/__init__.py``)::

    from .. import dispatch as _d
    from . import reference

    def _triton(A):                          # import optional dependencies lazily
        from . import triton as _tr
        return _tr.svd(A)

    svd_op = _d.Op("svd", [
        _d.Impl("cuda", lambda A: torch.ops.fastgeom.svd(A), _d.compiled_cuda("svd")),
        _d.Impl("triton", _triton, _d.triton_on_device(), auto_devices=("cuda",)),
        _d.Impl("cpp", lambda A: torch.ops.fastgeom.svd(A), _d.compiled_cpu("svd")),
        _d.Impl("torch", reference.svd, _d.always),
    ])

    def svd(A, backend="auto"):
        return svd_op(A, backend=backend, device=A.device, dtype=A.dtype)

An availability predicate is ``f(device, dtype, **ctx) -> str | None``: ``None`` when the candidate can
run, else the reason it cannot (shown in errors). Predicates are evaluated at call time (so a
monkeypatched or failed extension is seen). Combine them with :func:`all_of`. ``ctx`` holds whatever
the op passes (``op(..., device=, dtype=, ctx={"d": 3})``). ``serves`` lists the explicit backend names
a candidate answers to (default: its own name), e.g. a Triton kernel that is the GPU implementation
of an op without a compiled CUDA twin serves ``("triton", "cuda")``; ``auto_devices`` restricts where
auto may take it (the Triton interpreter on CPU runs only when asked for by name).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._ext import INSTALL_HINT, ext, triton_status

BACKENDS = ("auto", "torch", "cpp", "cuda", "triton")
_BACKEND_DEVICE = {"cpp": "cpu", "cuda": "cuda"}  # an explicit backend of these names implies the device

Predicate = Callable[..., "str | None"]

_RECORDS: contextvars.ContextVar[tuple[dict[str, str], ...]] = contextvars.ContextVar(
    "fastgeom_dispatch_records", default=()
)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, str]]:
    """Yield a dict that every dispatched call inside the block fills with ``{op name: impl name}``."""
    rec: dict[str, str] = {}
    token = _RECORDS.set(_RECORDS.get() + (rec,))
    try:
        yield rec
    finally:
        _RECORDS.reset(token)


def record(op: str, impl: str) -> None:
    """Note that ``impl`` ran for ``op`` in every enclosing :func:`recording` block."""
    for rec in _RECORDS.get():
        have = rec.get(op)
        if have is None:
            rec[op] = impl
        elif impl not in have.split(","):
            rec[op] = f"{have},{impl}"


@dataclass(frozen=True)
class Impl:
    """One implementation of an op: ``fn`` runs it, ``available(device, dtype, **ctx)`` says why not."""

    name: str
    fn: Callable[..., Any]
    available: Predicate
    serves: tuple[str, ...] = ()
    auto_devices: tuple[str, ...] | None = None

    def answers(self, backend: str) -> bool:
        return backend in (self.serves or (self.name,))

    def why_not(self, device: torch.device, dtype: torch.dtype | None, backend: str = "auto", **ctx) -> str | None:
        if backend == "auto" and self.auto_devices is not None and device.type not in self.auto_devices:
            return f"auto uses it only on {'/'.join(self.auto_devices)} tensors"
        why = self.available(device, dtype, **ctx)
        if why is None and backend in _BACKEND_DEVICE and device.type != _BACKEND_DEVICE[backend]:
            return f"backend {backend!r} needs {_BACKEND_DEVICE[backend]} tensors, got {device.type}"
        return why


@dataclass
class Op:
    """An op's ordered candidates (first = preferred); call it with ``backend=``, ``device=``, ``dtype=``."""

    name: str
    impls: list[Impl] = field(default_factory=list)

    def register(self, impl: Impl, before: str | None = None) -> None:
        """Add a candidate, at the end or in front of the candidate named ``before``."""
        if any(i.name == impl.name for i in self.impls):
            raise ValueError(f"op {self.name!r} already has an implementation named {impl.name!r}")
        names = [i.name for i in self.impls]
        self.impls.insert(names.index(before) if before in names else len(self.impls), impl)

    def candidates(
        self, device: torch.device, dtype: torch.dtype | None = None, backend: str = "auto", **ctx
    ) -> list[tuple[str, str | None]]:
        """[(impl name, None or the reason it cannot run)] for the candidates ``backend`` may take, in order."""
        check_backend(backend)
        auto = backend == "auto"
        return [(i.name, i.why_not(device, dtype, backend, **ctx)) for i in self.impls if auto or i.answers(backend)]

    def select(self, backend: str, device: torch.device, dtype: torch.dtype | None = None, **ctx) -> Impl:
        """The candidate that runs for ``backend`` here; raises RuntimeError naming why when none can."""
        check_backend(backend)
        auto = backend == "auto"
        reasons = []
        for impl in self.impls:
            if not (auto or impl.answers(backend)):
                continue
            why = impl.why_not(device, dtype, backend, **ctx)
            if why is None:
                return impl
            reasons.append(f"{impl.name}: {why}")
        if not reasons:
            have = sorted({b for i in self.impls for b in (i.serves or (i.name,))})
            raise RuntimeError(
                f"backend {backend!r} is not usable here: op {self.name!r} has no {backend!r} "
                f"implementation (it has {', '.join(map(repr, have))})"
            )
        raise RuntimeError(
            f"backend {backend!r} is not usable here for op {self.name!r} on "
            f"{device.type} {dtype}: " + "; ".join(reasons)
        )

    def pick(self, backend: str, device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str:
        """Name of the candidate :meth:`select` returns."""
        return self.select(backend, device, dtype, **ctx).name

    def __call__(
        self,
        *args,
        backend: str = "auto",
        device: torch.device,
        dtype: torch.dtype | None = None,
        ctx: dict | None = None,
        **kwargs,
    ):
        impl = self.select(backend, device, dtype, **(ctx or {}))
        out = impl.fn(*args, **kwargs)
        record(self.name, impl.name)
        return out


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(map(repr, BACKENDS))}")


# ---- availability predicates -------------------------------------------------------------------


def always(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
    return None


def _ext_missing(op: str) -> str | None:
    if not ext.ok:
        return f"fastgeom._C not loaded ({ext.error}); to get it, {INSTALL_HINT}"
    if not ext.has_op(op):
        return (
            f"fastgeom._C was built without the {op} op; rebuild the extension "
            "(`FASTGEOM_BUILD_CUDA=0 python setup.py build_ext --inplace`)"
        )
    return None


def compiled_cpu(op: str) -> Predicate:
    """fastgeom._C has ``op`` and the tensors are on the CPU."""

    def pred(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
        if device.type != "cpu":
            return f"runs on CPU tensors, got {device.type}"
        return _ext_missing(op)

    return pred


def compiled_cuda(op: str) -> Predicate:
    """fastgeom._C was built with CUDA, has ``op``, and the tensors are on a CUDA device."""

    def pred(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
        why = _ext_missing(op)
        if why is not None:
            return why
        if not ext.with_cuda:
            return (
                "fastgeom._C was built without CUDA; to get it, reinstall with "
                "FASTGEOM_BUILD_CUDA=1 (see the install table in README.md)"
            )
        if not torch.cuda.is_available():
            return "no CUDA device visible"
        if device.type != "cuda":
            return f"needs CUDA tensors, got {device.type}"
        return None

    return pred


def triton_on_device() -> Predicate:
    """Triton importable, and a CUDA tensor (or a CPU tensor under TRITON_INTERPRET=1 without a GPU)."""

    def pred(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
        ok, why = triton_status()
        if not ok:
            return why
        if device.type == "cuda" or (device.type == "cpu" and not torch.cuda.is_available()):
            return None
        return f"needs CUDA tensors, got {device.type}"

    return pred


def dtypes(*allowed: torch.dtype) -> Predicate:
    """The tensors' dtype is one of ``allowed``."""

    def pred(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
        if dtype is not None and dtype not in allowed:
            return f"supports {', '.join(str(d) for d in allowed)}, got {dtype}"
        return None

    return pred


def all_of(*preds: Predicate) -> Predicate:
    """Available when every predicate is; the first reason otherwise."""

    def pred(device: torch.device, dtype: torch.dtype | None = None, **ctx) -> str | None:
        for p in preds:
            why = p(device, dtype, **ctx)
            if why is not None:
                return why
        return None

    return pred


def describe(ops: Sequence[Op], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, list]:
    """{op name: [(impl, reason or None), ...]} for ``auto`` on ``device``: what would run and why not."""
    return {op.name: op.candidates(device, dtype) for op in ops}
