"""Hypothesis fuzzing of the CLI's argument parsing and of its file loading: every bad input ends
in a one-line error (SystemExit 2 from argparse, InputError naming the file otherwise), never in
another exception; a results CSV cut at any byte resumes to the complete file."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgeom import cli, runio
from fastgeom.runio import InputError, ResultsCSV

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

OPTS = [
    "--model",
    "--model-args",
    "--num-classes",
    "--cifar-stem",
    "--activation",
    "--checkpoint",
    "--layer",
    "--pool",
    "--target",
    "--normalize",
    "--points",
    "--data",
    "--path",
    "--plane",
    "--grid",
    "--hull",
    "--input-shape",
    "--method",
    "--chunk-size",
    "--budget-mb",
    "--dtype",
    "--device",
    "--rank-tol",
    "--seed",
    "--batch-size",
    "--k",
    "--out",
    "--diagnostics",
    "--quiet",
    "--dist-backend",
    "--dist-timeout",
    "--column",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-3",
            "2x2",
            "1,2",
            "1,2,3",
            "512",
            "nan",
            "inf",
            "1e9",
            "{}",
            '{"width": 3}',
            "[1]",
            "float64",
            "gelu",
            "convex",
            "auto",
            "m:f",
            "x.pt",
            "",
        ]
    ),
    st.text(max_size=8),
    st.integers(-5, 10**6).map(str),
)
ARGV = st.tuples(
    st.sampled_from(["logvol", "spectrum", "plot", "info", "bogus"]),
    st.lists(st.one_of(st.sampled_from(OPTS), VALUES), max_size=12),
)


@FUZZ
@given(argv=ARGV)
def test_fuzz_argument_parsing(argv, capsys):
    cmd, rest = argv
    try:
        args = cli.build_parser().parse_args([cmd, *rest])
        if cmd in ("logvol", "spectrum"):
            cli.validate(args)
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err.strip()
        assert "error:" in err and "\n" not in err
    except InputError as e:
        assert str(e) and "\n" not in str(e)


def _valid_bytes(kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, np.arange(24, dtype=np.float32).reshape(4, 6))
    else:
        torch.save(torch.arange(24, dtype=torch.float64).reshape(4, 6), buf)
    return buf.getvalue()


VALID = {k: _valid_bytes(k) for k in ("npy", "pt")}


@FUZZ
@given(kind=st.sampled_from(["npy", "pt"]), data=st.data())
def test_fuzz_points_file_bytes(kind, data):
    """Random bytes, truncations and byte flips of a valid file: a tensor or a one-line InputError."""
    good = VALID[kind]
    mode = data.draw(st.sampled_from(["random", "truncate", "flip"]))
    if mode == "random":
        blob = data.draw(st.binary(max_size=300))
    elif mode == "truncate":
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        pos = data.draw(st.integers(0, len(good) - 1))
        blob = good[:pos] + bytes([good[pos] ^ data.draw(st.integers(1, 255))]) + good[pos + 1 :]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, f"points.{kind}")
        with open(p, "wb") as f:
            f.write(blob)
        try:
            x = runio.load_points(p)
        except InputError as e:
            assert p in str(e) and "\n" not in str(e)
        else:
            assert isinstance(x, torch.Tensor) and x.dim() >= 2 and x.is_floating_point()


@FUZZ
@given(
    shape=st.lists(st.integers(0, 4), max_size=4),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64, np.float16]),
    nan=st.booleans(),
    ext=st.sampled_from(["npy", "pt"]),
)
def test_fuzz_points_arrays(shape, dtype, nan, ext):
    a = np.ones(shape, dtype=dtype)
    if nan and a.size and a.dtype.kind in "fc":
        a.reshape(-1)[-1] = np.nan
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, f"p.{ext}")
        if ext == "npy":
            np.save(p, a)
        else:
            torch.save(torch.from_numpy(a), p)
        ok = len(shape) >= 2 and a.dtype.kind == "f" and not (nan and a.size)
        try:
            x = runio.load_points(p)
        except InputError as e:
            assert not ok, str(e)
            assert p in str(e) and "\n" not in str(e)
        else:
            assert ok and tuple(x.shape) == tuple(shape)
            np.testing.assert_array_equal(x.numpy(), a)


@pytest.fixture(scope="module")
def net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoints(net, data):
    """Checkpoints with keys dropped, added, reshaped, or bytes corrupted: one-line InputError or loaded."""
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    keys = sorted(sd)
    change = data.draw(st.sampled_from(["drop", "add", "reshape", "bytes", "none", "wrap"]))
    if change == "drop":
        sd.pop(data.draw(st.sampled_from(keys)))
    elif change == "add":
        sd[data.draw(st.text(min_size=1, max_size=6))] = torch.zeros(2)
    elif change == "reshape":
        k = data.draw(st.sampled_from(keys))
        sd[k] = torch.zeros(sd[k].numel() + data.draw(st.integers(1, 3)))
    elif change == "wrap":
        sd = {"model": {"module." + k: v for k, v in sd.items()}}
    buf = io.BytesIO()
    torch.save(sd, buf)
    blob = buf.getvalue()
    if change == "bytes":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "ck.pt")
        with open(p, "wb") as f:
            f.write(blob)
        try:
            runio.load_checkpoint(net, p)
        except InputError as e:
            assert change in ("drop", "add", "reshape", "bytes"), str(e)
            assert p in str(e) and "\n" not in str(e)
        else:
            assert change in ("none", "wrap", "add") and (change != "add" or list(sd)[-1] in net.state_dict())


@FUZZ
@given(n=st.integers(1, 12), data=st.data())
def test_fuzz_csv_cut_anywhere_resumes(n, data):
    """A results CSV cut at any byte (a kill mid-write) keeps exactly its complete rows; appending the
    rest and finalizing gives the complete file."""
    rows = [[i, float(np.exp(i * 1.37) * (-1) ** i), i % 3] for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "r.csv")
        with ResultsCSV(p, ["logvol", "rank"]) as c:
            c.append(rows)
            c.finalize()
        full = open(p, "rb").read()
        header = full.index(b"\n") + 1
        cut = data.draw(st.integers(header, len(full)))
        junk = data.draw(st.binary(max_size=12).filter(lambda b: b"\n" not in b))  # torn bytes, any encoding
        with open(p, "wb") as f:
            f.write(full[:cut] + junk)
        c = ResultsCSV(p, ["logvol", "rank"]).open()
        assert c.done == set(range(full[header:cut].count(b"\n")))
        c.append(rows)
        c.finalize()
        assert open(p, "rb").read() == full
