"""An out-of-memory error injected into the streamed engine halves the chunk (or the point batch)
and the run goes on to the results of a run without it: same rows, same ranks, log volumes equal
to rounding (a different chunk size changes the shapes of the batched matmuls, and BLAS does not
promise bit-identical rows across shapes; we see differences in the last bit only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli_helpers import write_net

from fastgeom import cli
from fastgeom.engine import streamed
from fastgeom.runio import read_csv


@pytest.fixture
def run(tmp_path, monkeypatch):
    net = write_net(tmp_path)
    torch.save(torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7)), tmp_path / "x.pt")
    ks = []
    one_hot = streamed._one_hot

    def spy(k, *a, **kw):
        ks.append(k)
        return one_hot(k, *a, **kw)

    monkeypatch.setattr(streamed, "_one_hot", spy)

    def go(name, layer, injector=None, rc=0):
        ks.clear()
        monkeypatch.setattr(streamed, "fault_injector", injector)
        out = tmp_path / f"{name}.csv"
        argv = [
            "logvol",
            "--model",
            f"{net}:mlp",
            "--model-args",
            '{"width": 11}',
            "--points",
            str(tmp_path / "x.pt"),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--chunk-size",
            "8",
            "--method",
            "streamed",
            "--quiet",
        ]
        assert cli.main(argv + (["--layer", layer] if layer else [])) == rc
        return read_csv(str(out)), list(ks)

    return go


def _same(got, clean):
    (cols, a), (cols0, b) = got, clean
    assert cols == cols0 and a.shape == b.shape == (9, 3)
    assert (a[:, [0, 2]] == b[:, [0, 2]]).all()  # indices and ranks exactly
    np.testing.assert_allclose(a[:, 1], b[:, 1], rtol=1e-13, atol=1e-13)


def _oom_on(stage, times):
    calls = {"n": 0}

    def inject(s):
        if s == stage and calls["n"] < times:
            calls["n"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    inject.calls = calls
    return inject


@pytest.mark.parametrize("layer", ["2", None])  # forward mode (5 tangents), reverse mode (3 cotangents)
def test_injected_oom_halves_chunk_same_results(run, layer):
    clean, ks_clean = run("clean", layer)
    inj = _oom_on("chunk", 2)
    got, ks = run("oom", layer, inj)
    assert inj.calls["n"] == 2
    _same(got, clean)
    first = ks_clean[0]
    assert first > 1 and ks[0] == max(1, first // 4)  # two OOMs: the first chunk run is a quarter
    assert max(ks) < first  # the halved chunk is kept for the later batches


def test_injected_oom_in_forward_halves_point_batch(run):
    clean, _ = run("clean", None)
    inj = _oom_on("forward", 1)
    got, _ = run("oomfwd", None, inj)
    assert inj.calls["n"] == 1
    _same(got, clean)


def test_oom_that_never_goes_away_is_reported(run, capsys):
    run("never", None, _oom_on("chunk", 10**9), rc=1)
    err = capsys.readouterr().err.strip()
    assert "out of memory even at 1 point and chunk 1" in err and "\n" not in err
