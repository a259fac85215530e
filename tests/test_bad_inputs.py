"""The audit of issue 14 made permanent: bad-input, misuse and fault cases for the API and the CLI,
one row each, with the outcome asserted: a clear error matching a message, or NaN at the named
points with a warning, or the right number, never a silent wrong number or a raw traceback.

Rows whose fix lies outside this module's owners' files are marked
``xfail(strict=True, reason="<owner>: <what>")``: they fail loudly (XPASS) once fixed, and the
owner removes the mark.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch
from _cli_helpers import PY, env, read_rows
from torch import nn

import fastgeom as fg
from fastgeom import checks, cli, runio
from fastgeom.runio import RunLock, read_csv

D = torch.float64
NAN_WARNING = r"(?i)nan|non-finite|not finite|overflow|inf"


# ---------------------------------------------------------------------------------------------
# outcomes


def raises(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def nan_at(fn, points, n, match=NAN_WARNING):
    """fn() -> (n,) result: NaN exactly at `points`, finite elsewhere, with a warning matching `match`."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    out = out[0] if isinstance(out, tuple) else out
    bad = torch.isnan(out.reshape(n, -1)).any(1)
    assert bad.nonzero().flatten().tolist() == list(points), out
    assert torch.isfinite(out.reshape(n, -1)[~bad]).all(), out
    assert any(re.search(match, str(w.message)) for w in rec), [str(w.message) for w in rec]


def nan_or_error(fn, points, n, match):
    """NaN at `points` with a warning, or an error whose message matches `match`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except (ValueError, TypeError) as e:
        assert re.search(match, str(e)), str(e)
        return
    nan_at(fn, points, n)


# ---------------------------------------------------------------------------------------------
# models


def lin(d_in=3, d_out=3, w=None):
    m = nn.Linear(d_in, d_out).to(D)
    if w is not None:
        with torch.no_grad():
            m.weight.copy_(w)
    return m


def nan_weights():
    m = nn.Sequential(lin(), nn.Tanh())
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = lin()

    def forward(self, x):
        x.sub_(1.0)
        return torch.tanh(self.lin(x))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = lin()

    def forward(self, x):
        return self.l(torch.tanh(self.l(x)))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = lin()

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on values: no vmap over points
            return torch.tanh(self.l(x))
        return self.l(x)


def bn_coupled():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()).to(D)


def x3(n=4, seed=0):
    return torch.randn(n, 3, dtype=D, generator=torch.Generator().manual_seed(seed))


def _x_untouched(method):
    x = torch.full((2, 3), 1.54, dtype=D)
    x0 = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fg.logvol(InPlace(), x, method=method)
    assert torch.equal(x, x0), "the caller's x was modified"
    want = fg.logvol(None, x0, layer=lambda z, m=InPlace(): torch.tanh(m.lin(z - 1.0)), method="dense")
    assert out.shape == want.shape


def _x_untouched_or_refused(method):
    """x unchanged, and either a value or a clear refusal (not torch's raw in-place RuntimeError)."""
    x = torch.full((2, 3), 1.54, dtype=D)
    x0 = x.clone()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fg.logvol(InPlace(), x, method=method)
    except (ValueError, TypeError, NotImplementedError):
        pass
    assert torch.equal(x, x0), "the caller's x was modified"


def _grad_honest(method):
    x = x3().requires_grad_(True)
    out = fg.logvol(nn.Sequential(lin(), nn.Tanh()), x, method=method)
    if out.requires_grad:
        out.sum().backward()
        assert x.grad is not None, "claims requires_grad, but backward leaves x.grad None"


def _batch_consistent():
    m = bn_coupled()
    x = torch.randn(6, 1, 5, 5, dtype=D, generator=torch.Generator().manual_seed(1))
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            together = fg.logvol(m, x)
    except ValueError as e:
        assert "batch" in str(e)
        return
    alone = torch.cat([fg.logvol(m, x[i : i + 1]) for i in range(6)])
    assert any("batch" in str(w.message) for w in rec)
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)


def _dense_control_flow():
    """Python control flow on values: vmap over points fails, dense falls back to a loop (warned once per
    process, engine/batching.py) and gives each point's own value."""
    x, m = x3(), Branchy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = fg.logvol(m, x, method="dense")
    alone = torch.cat([fg.logvol(m, x[i : i + 1], method="streamed") for i in range(x.shape[0])])
    torch.testing.assert_close(got, alone, rtol=1e-12, atol=0)


def _saturated():
    m = nn.Sequential(lin(2, 2, 1e3 * torch.eye(2, dtype=D)), nn.Tanh())
    raises(ValueError, r"(?i)saturat", lambda: fg.logvol(m, torch.ones(2, 2, dtype=D)))


def _env_budget(monkeypatch):
    monkeypatch.setenv("FASTGEOM_CPU_BUDGET_MB", "lots")
    raises(ValueError, r"FASTGEOM_CPU_BUDGET_MB.*lots", lambda: fg.logvol(lin(), x3(), method="streamed"))


def _sphere_zero_later():
    x = x3()
    x[2] = 0.0
    m = nn.Linear(3, 4, bias=False).to(D)  # phi(0) = 0: the sphere projection is undefined there
    nan_or_error(lambda: fg.logvol(m, x, target="sphere"), [2], 4, r"point\(s\)? 2|at point 2")


def _no_deprecation_warnings():
    code = (
        "import torch, fastgeom as fg\nm = torch.nn.Linear(2, 5).double()\n"
        "fg.logvol(m, torch.randn(3, 2, dtype=torch.float64), method='streamed')\n"
    )
    r = subprocess.run(
        [PY, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-600:]


def _shallow_saturated():
    from fastgeom import shallow

    W, b, x = torch.eye(2, dtype=D), torch.tensor([20.0, 0.0], dtype=D), torch.zeros(1, 2, dtype=D)
    ref = shallow.log_volume_element(W, b, x, "erf", backend="torch")
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(shallow.log_volume_element(W, b, x, "erf"), ref, rtol=1e-10, atol=0)


def _nngp_large_x(act, r, quad):
    from fastgeom import nngp

    X = torch.tensor([[r, r]], dtype=D)
    try:
        got = nngp.ricci_scalar(X, act, method="quadrature" if quad else "auto")
    except ValueError as e:  # refusing outside the validated range is a fix too
        assert "range" in str(e) or "|x|" in str(e), str(e)
        return
    assert torch.isfinite(got).all(), got
    if act == "erf":  # the closed form is the reference where it is valid (|x| <= 100 here)
        if quad:
            torch.testing.assert_close(got, nngp.ricci_scalar(X, "erf", method="closed"), rtol=1e-6, atol=0)
        else:  # far out the curvature keeps the sign it has at |x| = 30..100
            assert (got < 0).all(), got


API = [
    # non-finite J, features or cast inputs: NaN at exactly those points, named in a warning
    pytest.param(lambda: nan_at(lambda: fg.logvol(nan_weights(), x3()), [0, 1, 2, 3], 4), id="api-nan-weights"),
    pytest.param(
        lambda: nan_at(
            lambda: fg.logvol(None, torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D), layer=torch.sqrt, method="dense"),
            [1],
            2,
        ),
        id="api-inf-derivative",
    ),
    pytest.param(
        lambda: nan_at(
            lambda: fg.logvol(None, torch.tensor([[1.0, 0.5], [100.0, 0.5]]), layer=torch.exp, method="streamed"),
            [1],
            2,
        ),
        id="api-overflow-J",
    ),
    pytest.param(
        lambda: nan_at(
            lambda: fg.logvol(
                nn.Sequential(nn.Linear(3, 3), nn.Tanh()),
                torch.tensor([[1.0, 2, 3], [1e39, 0, 0], [0.5, 0, 1]], dtype=D),
            ),
            [1],
            3,
        ),
        id="api-cast-f64-to-f32",
    ),
    pytest.param(
        lambda: nan_at(
            lambda: fg.logvol(
                nn.Sequential(lin(), nn.Tanh()), torch.tensor([[1.0, 2, 3], [7e4, 0, 0]], dtype=D), dtype=torch.float16
            ),
            [1],
            2,
        ),
        id="api-cast-f16",
    ),
    pytest.param(
        lambda: nan_at(
            lambda: fg.logvol(None, x3(), layer=lambda z: z * 2 + float("nan"), method="dense"), [0, 1, 2, 3], 4
        ),
        id="api-nan-feature-finite-J",
    ),
    pytest.param(_sphere_zero_later, id="api-sphere-zero-later-point"),
    # x is never modified
    pytest.param(lambda: _x_untouched("dense"), id="api-inplace-x-dense"),
    pytest.param(lambda: _x_untouched("streamed"), id="api-inplace-x-streamed"),
    pytest.param(lambda: _x_untouched("auto"), id="api-inplace-x-auto"),
    pytest.param(lambda: _x_untouched_or_refused("linearized"), id="api-inplace-x-linearized"),
    # probes: batch coupling, layers called twice, devices
    pytest.param(
        lambda: (
            checks.batch_coupled(checks.FeatureMap(bn_coupled()), torch.randn(3, 1, 5, 5, dtype=D))
            or pytest.fail("not detected")
        ),
        id="probe-batch-coupled-detected",
    ),
    pytest.param(_batch_consistent, id="api-batch-coupled"),
    pytest.param(
        lambda: checks.layer_calls(checks.FeatureMap(Twice(), "l"), x3(1)) == 2 or pytest.fail("count"),
        id="probe-layer-called-twice",
    ),
    pytest.param(
        lambda: pytest.warns(checks.LayerCallWarning, fg.logvol, Twice(), x3(), "l"), id="api-layer-called-twice"
    ),
    pytest.param(
        lambda: raises(
            ValueError,
            r"x is on the meta device",
            lambda: checks.check_points(torch.empty(2, 3, device="meta"), device="cpu"),
        ),
        id="probe-x-meta",
    ),
    pytest.param(
        lambda: raises(
            ValueError, r"x is on cpu but the model is on cuda:0", lambda: checks.check_points(x3(), device="cuda:0")
        ),
        id="probe-x-other-device",
    ),
    pytest.param(
        lambda: raises(ValueError, r"meta device", lambda: fg.logvol(lin(), torch.empty(2, 3, device="meta", dtype=D))),
        id="api-x-meta",
    ),
    pytest.param(
        lambda: raises(ValueError, r"meta device", lambda: fg.logvol(lin().to("meta"), x3())), id="api-model-meta"
    ),
    pytest.param(
        lambda: (
            checks.cast_overflow(torch.tensor([[1e39], [1.0]], dtype=D), torch.float32).tolist() == [True, False]
            or pytest.fail("mask")
        ),
        id="probe-cast-overflow",
    ),
    # callable layers: same cast, detached, clear errors
    pytest.param(
        lambda: torch.testing.assert_close(
            fg.logvol(_m := nn.Sequential(nn.Linear(3, 4), nn.Tanh()), x3(), layer=lambda z: _m(z), dtype=D),
            fg.logvol(_m, x3(), dtype=D),
            rtol=1e-13,
            atol=1e-13,
        ),
        id="api-callable-dtype-float64",
    ),
    pytest.param(
        lambda: (
            fg.logvol(
                _m := nn.Sequential(nn.Linear(3, 4), nn.Tanh()), x3().float(), layer=lambda z: _m(z), method="dense"
            ).grad_fn
            is None
            or pytest.fail("grad_fn")
        ),
        id="api-callable-no-graph",
    ),
    pytest.param(
        lambda: raises(
            TypeError, r"0-d tensor.*one row per point", lambda: fg.logvol(None, x3(), layer=lambda z: z.sum())
        ),
        id="api-callable-0d",
    ),
    # misleading or raw errors
    pytest.param(_dense_control_flow, id="api-dense-control-flow"),
    pytest.param(_saturated, id="api-saturated-units"),
    pytest.param(
        lambda: raises(ValueError, r"budget", lambda: fg.logvol(lin(), x3(), method="streamed", budget="lots")),
        id="api-budget-not-a-number",
    ),
    pytest.param(
        lambda: raises(ValueError, r"budget", lambda: fg.logvol(lin(), x3(), method="streamed", budget=-5)),
        id="api-budget-negative",
    ),
    pytest.param(
        lambda: raises(ValueError, r"chunk_size", lambda: fg.logvol(lin(), x3(), method="dense", chunk_size=0)),
        id="api-dense-chunk-size",
    ),
    pytest.param(
        lambda: raises(ValueError, r"rank_tol", lambda: fg.logvol(lin(), x3(), method="randomized", rank_tol=2.0)),
        id="api-randomized-rank-tol",
    ),
    # gradients: detached (documented) or correct, never silently None
    pytest.param(lambda: _grad_honest("dense"), id="api-grad-dense"),
    pytest.param(lambda: _grad_honest("streamed"), id="api-grad-streamed"),
    pytest.param(_no_deprecation_warnings, id="api-no-deprecation-warnings"),
    # closed forms (shallow, nngp)
    pytest.param(_shallow_saturated, id="shallow-cpp-saturated-erf"),
    pytest.param(lambda: _nngp_large_x("erf", 100.0, True), id="nngp-quadrature-large-x"),
    pytest.param(lambda: _nngp_large_x("tanh", 100.0, False), id="nngp-tanh-large-x"),
    pytest.param(lambda: _nngp_large_x("erf", 1e8, False), id="nngp-erf-closed-1e8"),
    pytest.param(
        lambda: raises(
            TypeError,
            r"complex",
            lambda: fg.shallow.log_volume_element(
                torch.eye(2, dtype=D), torch.zeros(2, dtype=D), torch.zeros(1, 2, dtype=torch.complex128), "erf"
            ),
        ),
        id="shallow-complex-x",
    ),
    pytest.param(
        lambda: raises(
            TypeError, r"complex", lambda: fg.nngp.ricci_scalar(torch.zeros(1, 2, dtype=torch.complex128), "erf")
        ),
        id="nngp-complex-x",
    ),
    pytest.param(
        lambda: raises(
            (TypeError, ValueError),
            r"dtype",
            lambda: fg.shallow.log_volume_element(
                torch.eye(2, dtype=D), torch.zeros(2, dtype=D), torch.tensor([[0.7, 0.2]]), "erf", dtype=torch.int64
            ),
        ),
        id="shallow-int-dtype",
    ),
]


@pytest.mark.parametrize("case", API)
def test_api(case):
    case()


def test_api_env_budget(monkeypatch):
    _env_budget(monkeypatch)


# ---------------------------------------------------------------------------------------------
# CLI

NET = """
import time
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 4)).double()


class _FailsLater(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = mlp()

    def forward(self, x):
        if bool((x[..., 0] > 50).any()):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED (simulated)")
        return self.inner(x)


def fails_later():
    return _FailsLater()


class _Refuses(nn.Module):
    def forward(self, x):
        raise NotImplementedError("this model has no forward for these points")


def refuses():
    return _Refuses()


def nan_weights():
    m = mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


class _Centered(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = mlp()

    def forward(self, x):
        h = self.inner(x)
        return torch.tanh(h + 0.5 * h.mean(0, keepdim=True))  # couples the points of a batch


def coupled():
    return _Centered()


class _Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = mlp()

    def forward(self, x):
        time.sleep(0.1)
        return self.inner(x)


def slow():
    return _Slow()
"""

N_PTS = 8


class CliRun:
    """A CLI run in this process: files in tmp_path, stderr captured, exit code returned."""

    def __init__(self, tmp_path, capsys, monkeypatch):
        self.d, self.capsys, self.mp = tmp_path, capsys, monkeypatch
        (tmp_path / "net.py").write_text(NET)
        self.net = str(tmp_path / "net.py")
        self.x = torch.randn(N_PTS, 5, dtype=D, generator=torch.Generator().manual_seed(5))
        torch.save(self.x, tmp_path / "x.pt")
        self.out = str(tmp_path / "out.csv")

    def __call__(self, *tail, factory="mlp", points=None, out=None, batch=4):
        argv = [
            "logvol",
            "--model",
            f"{self.net}:{factory}",
            "--points",
            str(points or self.d / "x.pt"),
            "--out",
            str(out or self.out),
            "--batch-size",
            str(batch),
            "--quiet",
            *map(str, tail),
        ]
        self.capsys.readouterr()
        rc = cli.main(argv)
        self.err = self.capsys.readouterr().err.strip()
        return rc

    def one_line(self, rc, want_rc, *needles):
        assert rc == want_rc, (rc, self.err)
        last = self.err.splitlines()[-1] if self.err else ""
        assert "Traceback" not in self.err and last.startswith("fastgeom: "), self.err
        for n in needles:
            assert n in last, (n, last)

    def rows(self, out=None):
        return read_csv(str(out or self.out))[1]

    def reference(self):
        ref = str(self.d / "ref.csv")
        assert self(out=ref) == 0, self.err
        return self.rows(ref)


def _npy(t, arr, name):
    p = t.d / name
    np.save(p, arr)
    return p


def _can_create(d: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=d):
            return True
    except OSError:
        return False


def cli_readonly(t):
    ro = t.d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = next((d for d in (str(ro), "/sys") if not _can_create(d)), None)  # root ignores the mode
    if target is None:
        pytest.skip("no read-only location here")
    out = os.path.join(str(target), "out.csv")
    t.one_line(t(out=out), 2, "cannot", "choose an --out")
    assert not os.path.exists(out)


def cli_full_disk_at_start(t):
    os.symlink("/dev/full", t.out)
    t.one_line(t(), 2, "No space left on device", "free some space")


def cli_full_disk_later_batch(t):
    ref = t.reference()
    real = runio._write_all
    calls = [0]

    def full(fd, buf):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, buf)

    t.mp.setattr(runio, "_write_all", full)
    t.one_line(t(), 2, "out.csv", "No space left on device", "rows finished before are kept")
    np.testing.assert_array_equal(t.rows(), ref[:4])
    t.mp.setattr(runio, "_write_all", real)
    assert t() == 0
    np.testing.assert_array_equal(t.rows(), ref)


def cli_missing_dir(t):
    t.one_line(t(out=t.d / "no" / "such" / "o.csv"), 2, "does not exist", "create it first")


def cli_out_is_dir(t):
    (t.d / "adir").mkdir()
    t.one_line(t(out=t.d / "adir"), 2, "is a directory")


def cli_model_error_later_batch(t):
    x = t.x.clone()
    x[6, 0] = 99.0
    torch.save(x, t.d / "x.pt")
    t.one_line(
        t(factory="fails_later"),
        2,
        "points 4..7: the model failed (RuntimeError: cuDNN error",
        "rows finished before are kept",
    )
    assert t.rows()[:, 0].tolist() == [0, 1, 2, 3]


def cli_model_error_first_point(t):
    t.one_line(t(factory="refuses"), 2, "x.pt", "do not fit", "no forward for these points")


def cli_ctrl_c(t):
    ref = t.reference()
    real = cli._evaluate
    calls = [0]

    def interrupted(*a, **kw):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    t.mp.setattr(cli, "_evaluate", interrupted)
    t.one_line(t(), 130, "interrupted", "kept in", "rerun the same command to resume")
    np.testing.assert_array_equal(t.rows(), ref[:4])
    assert not os.path.exists(t.out + ".lock")
    t.mp.setattr(cli, "_evaluate", real)
    assert t() == 0
    np.testing.assert_array_equal(t.rows(), ref)


def cli_lock(t):
    held = RunLock(t.out).acquire()  # as a second process would hold it (flock is per open file)
    try:
        t.one_line(t(), 2, "out.csv", "being written by another fastgeom process", f"pid {os.getpid()}")
        assert not os.path.exists(t.out) and not os.path.exists(t.out + ".meta.json")
    finally:
        held.release()
    assert t() == 0 and not os.path.exists(t.out + ".lock")
    assert not [f for f in os.listdir(t.d) if f.endswith(".tmp")]


def cli_nan_rows_exit_3(t):
    real = cli._evaluate

    def with_nan(*a, **kw):
        vals = real(*a, **kw)
        if len(vals) == 4 and a[2][0, 0] == t.x[4, 0]:
            vals[1][0] = float("nan")
        return vals

    t.mp.setattr(cli, "_evaluate", with_nan)
    t.one_line(t(), 3, f"1 of {N_PTS} points have NaN values", "index 5")
    r = t.rows()
    assert np.isnan(r[5, 1]) and np.isfinite(np.delete(r[:, 1], 5)).all()
    assert t() == 3  # a rerun has nothing to compute; the file still holds the NaN row


def cli_nan_weights(t):
    t.one_line(t(factory="nan_weights"), 3, f"{N_PTS} of {N_PTS} points have NaN values")


def cli_batch_size_independent(t):
    a, b = str(t.d / "a.csv"), str(t.d / "b.csv")
    ra = t(factory="coupled", out=a, batch=1)
    rb = t(factory="coupled", out=b, batch=4)
    if ra == rb == 2:
        assert re.search(r"(?i)batch.coupl|other points of its batch", t.err.replace(str(t.d), "")), t.err
        return
    assert ra == rb == 0, t.err
    np.testing.assert_allclose(t.rows(a), t.rows(b), rtol=1e-12, atol=1e-12)


def _same_values(t, path):
    ref = t.reference()
    assert t(points=path) == 0, t.err
    np.testing.assert_array_equal(t.rows(), ref)


def cli_big_endian_npy(t):
    _same_values(t, _npy(t, t.x.numpy().astype(">f8"), "be.npy"))


def cli_fortran_npy(t):
    _same_values(t, _npy(t, np.asfortranarray(t.x.numpy()), "f.npy"))


def cli_sparse_pt(t):
    torch.save(t.x.to_sparse(), t.d / "sp.pt")
    _same_values(t, t.d / "sp.pt")


def cli_meta_pt(t):
    torch.save(torch.empty(3, 5, device="meta"), t.d / "meta.pt")
    t.one_line(t(points=t.d / "meta.pt"), 2, "meta.pt", "meta tensor")


@pytest.mark.parametrize(
    "dtype,needle",
    [
        ("int32", "integer dtype"),
        ("complex128", "not a real number type"),
        ("bool", "dtype torch.bool"),
        ("longdouble", "extended precision"),
        ("V8", "not a real number type"),
        ("object", "not a readable .npy"),
    ],
)
def test_cli_non_float_npy(tmp_path, capsys, monkeypatch, dtype, needle):
    t = CliRun(tmp_path, capsys, monkeypatch)
    if dtype == "longdouble" and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 here")
    arr = np.zeros((3, 5), dtype=dtype) if dtype != "object" else np.array([[1, "a"]] * 3, dtype=object)
    p = t.d / "bad.npy"
    np.save(p, arr, allow_pickle=True)
    t.one_line(t(points=p), 2, "bad.npy", needle)
    assert not os.path.exists(t.out)


def test_cli_float8_pt(tmp_path, capsys, monkeypatch):
    t = CliRun(tmp_path, capsys, monkeypatch)
    torch.save(torch.zeros(3, 5).to(torch.float8_e4m3fn), t.d / "f8.pt")
    t.one_line(t(points=t.d / "f8.pt"), 2, "f8.pt", "dtype torch.float8_e4m3fn")


CLI = [
    pytest.param(cli_readonly, id="cli-readonly-out"),
    pytest.param(cli_full_disk_at_start, id="cli-full-disk-at-start"),
    pytest.param(cli_full_disk_later_batch, id="cli-full-disk-later-batch"),
    pytest.param(cli_missing_dir, id="cli-missing-dir"),
    pytest.param(cli_out_is_dir, id="cli-out-is-a-directory"),
    pytest.param(cli_model_error_later_batch, id="cli-model-error-later-batch"),
    pytest.param(cli_model_error_first_point, id="cli-model-error-first-point"),
    pytest.param(cli_ctrl_c, id="cli-ctrl-c"),
    pytest.param(cli_lock, id="cli-lock-on-out"),
    pytest.param(cli_nan_rows_exit_3, id="cli-nan-rows-exit-3"),
    pytest.param(cli_nan_weights, id="cli-nan-weights"),
    pytest.param(cli_batch_size_independent, id="cli-batch-coupled"),
    pytest.param(cli_big_endian_npy, id="cli-big-endian-npy"),
    pytest.param(cli_fortran_npy, id="cli-fortran-order-npy"),
    pytest.param(cli_sparse_pt, id="cli-sparse-pt"),
    pytest.param(cli_meta_pt, id="cli-meta-pt"),
]


@pytest.mark.parametrize("case", CLI)
def test_cli(case, tmp_path, capsys, monkeypatch):
    case(CliRun(tmp_path, capsys, monkeypatch))


@pytest.mark.slow
def test_cli_sigint_subprocess(tmp_path, capsys, monkeypatch):
    """A real Ctrl-C (SIGINT) mid-run: one line, exit 130, complete rows kept, the rerun completes."""
    t = CliRun(tmp_path, capsys, monkeypatch)
    torch.save(torch.randn(40, 5, dtype=D, generator=torch.Generator().manual_seed(2)), t.d / "x.pt")
    argv = [
        "logvol",
        "--model",
        f"{t.net}:slow",
        "--points",
        str(t.d / "x.pt"),
        "--out",
        t.out,
        "--batch-size",
        "2",
        "--quiet",
    ]
    p = subprocess.Popen(
        [PY, "-m", "fastgeom", *argv], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if os.path.exists(t.out) and len([r for r in read_rows(t.out)[1:] if r]) >= 4:
                break
            time.sleep(0.02)
        assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=120)[1].strip()
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("fastgeom: interrupted"), err
    done = len(t.rows())
    assert 4 <= done < 40 and read_rows(t.out)[-1] == ""
    assert cli.main(argv) == 0
    assert len(t.rows()) == 40
