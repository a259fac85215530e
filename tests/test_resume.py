"""Resumable runs: a run killed with SIGKILL keeps every row it wrote, and a rerun with the same
--out completes it to exactly the file of one uninterrupted run; torn and duplicated rows; one
writer per --out (a second process is refused)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from _cli_helpers import PY, env, read_rows, write_net

from fastgeom import cli
from fastgeom.runio import ResultsCSV

N = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    net = write_net(d)
    torch.save(torch.randn(N, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), d / "x.pt")
    return d, net


def _argv(d, net, out, factory="slow_mlp", delay=0.1):
    return [
        "logvol",
        "--model",
        f"{net}:{factory}",
        "--model-args",
        f'{{"delay": {delay}}}',
        "--points",
        str(d / "x.pt"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--layer",
        "inner.2",
        "--quiet",
    ]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(setup, tmp_path, capsys):
    d, net = setup
    ref = tmp_path / "ref.csv"
    assert cli.main(_argv(d, net, ref, delay=0.0)) == 0
    killed = tmp_path / "killed.csv"
    p = subprocess.Popen(
        [PY, "-m", "fastgeom", *_argv(d, net, killed)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if killed.exists() and len([r for r in read_rows(killed)[1:] if r]) >= 4:
                break
            time.sleep(0.02)
        assert p.poll() is None, f"the run ended before it could be killed: {p.stderr.read()}"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    lines = read_rows(killed)
    ref_lines = read_rows(ref)
    assert lines[-1] == ""  # every written row is complete
    body = lines[1:-1]
    assert 4 <= len(body) < N and len(set(body)) == len(body)
    assert body == ref_lines[1 : 1 + len(body)]  # the rows written are exactly the uninterrupted run's
    # a different model argument (another run) is refused; the same one resumes
    capsys.readouterr()
    assert cli.main(_argv(d, net, killed, delay=0.0)) == 2
    assert "different run" in capsys.readouterr().err
    assert cli.main(_argv(d, net, killed)[:-1]) == 0
    assert f"({N - len(body)} computed now on 1 process(es), {len(body)} already there)" in capsys.readouterr().out
    assert killed.read_bytes() == ref.read_bytes()


def test_torn_and_duplicated_rows(setup, tmp_path):
    d, net = setup
    ref = tmp_path / "ref.csv"
    argv = _argv(d, net, ref, delay=0.0)
    assert cli.main(argv) == 0
    full = ref.read_bytes()
    lines = full.split(b"\n")
    for cut_rows, tail, dup in ((5, b"10,-3.2", False), (0, b"", False), (7, b"", True), (9, b"1", True)):
        out = tmp_path / f"t{cut_rows}.csv"
        shutil.copy(str(ref) + ".meta.json", str(out) + ".meta.json")
        body = lines[: 1 + cut_rows]
        if dup:  # a row present twice (e.g. written by an earlier run and again) and out of order
            body = body + [lines[2], lines[1]]
        out.write_bytes(b"\n".join(body) + b"\n" + tail)
        assert cli.main(_argv(d, net, out, delay=0.0)) == 0
        assert out.read_bytes() == full, (cut_rows, tail, dup)


def test_results_csv_unit(tmp_path):
    p = str(tmp_path / "u.csv")
    with ResultsCSV(p, ["v"]) as c:
        c.append([[3, 0.1], [1, 1e-300]])
        c.append([[3, 9.0]])  # already present: skipped
        assert c.done == {1, 3}
        c.finalize()
    assert open(p).read() == "index,v\n1,1e-300\n3,0.1\n"
    with open(p, "a") as f:
        f.write("2,0.5,7\n")
    with pytest.raises(ValueError, match="has 3 fields"):
        ResultsCSV(p, ["v"]).open()
    with pytest.raises(ValueError, match="header"):
        ResultsCSV(p, ["w"]).open()


@pytest.mark.slow
def test_two_processes_on_one_out(setup, tmp_path):
    """A second process started on an --out that a first one is writing stops at once with one line
    (exit 2) and touches nothing; the first finishes to the complete file and removes its lock."""
    d, net = setup
    ref = tmp_path / "ref.csv"
    assert cli.main(_argv(d, net, ref, delay=0.0)) == 0
    out = tmp_path / "shared.csv"
    first = subprocess.Popen(
        [PY, "-m", "fastgeom", *_argv(d, net, out, delay=0.15)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not os.path.exists(str(out) + ".lock"):
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(
            [PY, "-m", "fastgeom", *_argv(d, net, out, delay=0.15)],
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None, "the first run ended before the second could start; make it slower"
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert f"is being written by another fastgeom process (pid {first.pid})" in err
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert out.read_bytes() == ref.read_bytes()
    assert not os.path.exists(str(out) + ".lock")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
