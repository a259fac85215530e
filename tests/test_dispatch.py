"""fastgeom.ops.dispatch: every op's auto choice, explicit impossible backends raising with the reason,
recording() of what ran, and the CPU compiled ops against their references (incl. extreme arguments)."""

import threading

import pytest
import torch
from torch import nn

import fastgeom as fg
from fastgeom import activations as A
from fastgeom._ext import ext
from fastgeom.ops import dispatch as dp
from fastgeom.ops import linearized, logdet, shallow
from fastgeom.ops.logdet import reference as lref
from fastgeom.ops.shallow import reference as sref

D = torch.float64
CPU = torch.device("cpu")
ALL_OPS = logdet.OPS + linearized.OPS + shallow.OPS
has_ext = ext.has_op("qrcp") and ext.has_op("logdiag_sum") and ext.has_op("shallow_geometry")
needs_ext = pytest.mark.skipif(not has_ext, reason=f"fastgeom._C not built here ({ext.error}); `make ext`")
SHALLOW_CTX = {"act": A.get("tanh"), "d": 2, "n": 7}


def _no_ext(monkeypatch):
    monkeypatch.setattr(ext, "module", None)
    monkeypatch.setattr(ext, "error", "not built (test)")


def test_every_op_lists_torch_last_and_auto_takes_the_first_available():
    for op in ALL_OPS:
        assert op.impls[-1].name == "torch", op.name
        ctx = SHALLOW_CTX if op is shallow.GEOMETRY else {}
        cands = op.candidates(CPU, D, **ctx)
        first = next(name for name, why in cands if why is None)
        assert op.pick("auto", CPU, D, **ctx) == first
        assert all(why for name, why in cands[: [n for n, _ in cands].index(first)])  # skipped ones say why


@needs_ext
def test_auto_on_cpu_with_the_extension():
    assert logdet.QRCP.pick("auto", CPU, D) == "cpp"
    assert logdet.LOGDIAG_SUM.pick("auto", CPU, D) == "cpp"
    assert linearized.DACT_ADD.pick("auto", CPU, D) == "torch"  # no CPU kernel: torch is faster
    assert shallow.pick("auto", A.get("tanh"), 2, CPU, 7) == "cpp"
    assert shallow.pick("auto", A.get("tanh"), 9, CPU, 20) == "torch"  # d > 4: not fusable
    why = dict(shallow.GEOMETRY.candidates(CPU, D, act=A.get("tanh"), d=9, n=20))
    assert "d <= 4" in why["cpp"] and why["torch"] is None
    # the Triton interpreter is never auto's choice on the CPU, even under TRITON_INTERPRET=1
    assert "auto uses it only on cuda" in dict(logdet.QRCP.candidates(CPU, D))["triton"]


def test_auto_without_the_extension_takes_torch(monkeypatch):
    _no_ext(monkeypatch)
    for op in ALL_OPS:
        ctx = SHALLOW_CTX if op is shallow.GEOMETRY else {}
        assert op.pick("auto", CPU, D, **ctx) == "torch", op.name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU case")
def test_explicit_cuda_without_a_gpu_raises_for_every_op():
    for op in ALL_OPS:
        ctx = SHALLOW_CTX if op is shallow.GEOMETRY else {}
        with pytest.raises(RuntimeError, match=rf"backend 'cuda' is not usable here for op '{op.name}'") as e:
            op.select("cuda", CPU, D, **ctx)
        msg = str(e.value)
        assert "no CUDA device" in msg or "without CUDA" in msg or "needs cuda tensors" in msg, msg
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        logdet.qrcp(torch.randn(1, 3, 3, dtype=D), backend="cuda")  # was: the torch loop, silently
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        fg.logvol(nn.Linear(3, 2).to(D), torch.randn(2, 3, dtype=D), method="dense", backend="cuda")


def test_explicit_impossible_backends_name_the_reason(monkeypatch):
    with pytest.raises(RuntimeError, match="op 'dact_add' has no 'cpp' implementation"):
        linearized.dact_add(torch.ones(3), torch.ones(2, 3), backend="cpp")
    with pytest.raises(RuntimeError, match="op 'logdiag_sum' has no 'triton' implementation"):
        logdet.logdiag_sum(torch.ones(1, 2, 2), torch.tensor([2]), backend="triton")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        logdet.qrcp(torch.ones(1, 2, 2), backend="fast")
    if has_ext:
        with pytest.raises(RuntimeError, match=r"cpp: the fused kernels need input dimension d <= 4, got d = 9"):
            shallow.pick("cpp", A.get("tanh"), 9, CPU, 20)
        custom = A.Activation("cube", lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z)
        with pytest.raises(RuntimeError, match="no fused kernel for the activation 'cube'"):
            shallow.pick("cpp", custom, 2, CPU)
    _no_ext(monkeypatch)
    with pytest.raises(RuntimeError, match=r"backend 'cpp' is not usable here.*not built \(test\).*pip install"):
        logdet.qrcp(torch.ones(1, 2, 2), backend="cpp")


def test_recording_captures_what_ran_and_nests():
    m = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).to(D)
    x = torch.randn(3, 5, dtype=D)
    with dp.recording() as outer:
        fg.logvol(m, x, method="dense", rank_tol=1e-14)  # rank_tol forces qrcp on every point
        want = "cpp" if has_ext else "torch"
        assert outer == {"qrcp": want, "logdiag_sum": want}
        with dp.recording() as inner:
            linearized.dact_add(torch.ones(3, dtype=D), torch.ones(2, 3, dtype=D))
            logdet.logdiag_sum(torch.ones(1, 2, 2), torch.tensor([2]), backend="torch")
        assert inner == {"dact_add": "torch", "logdiag_sum": "torch"}
    # the outer block saw the inner calls too; one op run by two impls lists both in order of first use
    assert outer == {"qrcp": want, "logdiag_sum": want if want == "torch" else "cpp,torch", "dact_add": "torch"}
    logdet.logdiag_sum(torch.ones(1, 2, 2), torch.tensor([2]))  # outside any block: nothing recorded
    assert "shallow_geometry" not in outer


def test_recording_is_per_thread():
    seen = {}

    def work():
        with dp.recording() as r:
            logdet.qrcp(torch.randn(1, 3, 2, dtype=D), backend="torch")
        seen.update(r)

    with dp.recording() as main:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert seen == {"qrcp": "torch"} and main == {}


def test_a_registered_op_prefers_the_first_available_candidate():
    calls = []
    op = dp.Op("toy", [dp.Impl("torch", lambda v: calls.append("torch") or v, dp.always)])
    op.register(dp.Impl("cpp", lambda v: calls.append("cpp") or v, lambda dev, dt, **c: "not today"), before="torch")
    op.register(dp.Impl("triton", lambda v: calls.append("triton") or v, dp.dtypes(torch.float32)), before="torch")
    assert [i.name for i in op.impls] == ["cpp", "triton", "torch"]
    with pytest.raises(ValueError, match="already has an implementation named 'cpp'"):
        op.register(dp.Impl("cpp", print, dp.always))
    with dp.recording() as r:
        op(1, device=CPU, dtype=torch.float32)
        op(1, device=CPU, dtype=D)
    assert calls == ["triton", "torch"] and r == {"toy": "triton,torch"}
    with pytest.raises(RuntimeError, match="backend 'cpp' is not usable here for op 'toy'.*cpp: not today"):
        op(1, backend="cpp", device=CPU, dtype=D)
    with pytest.raises(RuntimeError, match="triton: supports torch.float32, got torch.float64"):
        op(1, backend="triton", device=CPU, dtype=D)
    assert dp.describe([op], CPU, D)["toy"][-1] == ("torch", None)


@needs_ext
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 5, 7), (1, 1, 1), (0, 2, 3)])
def test_cpp_qrcp_and_logdiag_sum_agree_with_the_references(shape):
    g = torch.Generator().manual_seed(sum(shape))
    A_ = torch.randn(*shape, generator=g, dtype=D) * torch.logspace(0, -200, shape[2], dtype=D)  # graded
    R1, p1 = logdet.qrcp(A_, backend="cpp")
    R2, p2 = lref.qrcp(A_)
    assert torch.equal(p1, p2)
    d1, d2 = torch.diagonal(R1, dim1=-2, dim2=-1), torch.diagonal(R2, dim1=-2, dim2=-1)
    one = torch.ones_like(d2)
    torch.testing.assert_close(
        d1 / torch.where(d2 == 0, one, d2), torch.where(d2 == 0, 0 * one, one), rtol=1e-12, atol=0
    )
    # saturated diagonals (1e-300 .. 1e300) and k beyond the diagonal / negative
    R = torch.diag_embed(torch.tensor([[1e300, 1e-300, -1.0], [0.5, 1e-200, 1e200]], dtype=D))
    k = torch.tensor([5, -1])
    torch.testing.assert_close(logdet.logdiag_sum(R, k, backend="cpp"), lref.logdiag_sum(R, k), rtol=1e-15, atol=0)
    k = torch.tensor([2, 3])
    torch.testing.assert_close(logdet.logdiag_sum(R, k, backend="cpp"), lref.logdiag_sum(R, k), rtol=1e-15, atol=1e-15)


@needs_ext
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu"])
def test_cpp_shallow_agrees_with_the_reference_saturated(name):
    g = torch.Generator().manual_seed(7)
    W = torch.randn(9, 2, generator=g, dtype=D)
    b = torch.randn(9, generator=g, dtype=D)
    x = torch.tensor([[0.1, -0.2], [3.0, 4.0], [-6.0, 5.0]], dtype=D)  # the last points saturate most units
    act = A.get(name)
    out = shallow.geometry(W, b, x, act, "cpp", want=("metric", "logvol"))
    torch.testing.assert_close(out["metric"], sref.metric(W, b, x, act), rtol=1e-11, atol=1e-300)
    torch.testing.assert_close(out["logvol"], sref.log_volume_element(W, b, x, act), rtol=1e-11, atol=1e-11)
