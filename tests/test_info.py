"""fastgeom.info() and `python -m fastgeom info`: versions, backends built / usable, build metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import fastgeom as fg
from fastgeom._ext import ext
from fastgeom.info import format_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_info_dict():
    d = fg.info()
    assert d["fastgeom"] == fg.__version__
    assert d["torch"] == torch.__version__
    assert d["cuda_available"] == torch.cuda.is_available()
    assert set(d["backends"]) == {"torch", "cpp", "cuda", "triton"}
    assert d["backends"]["torch"]["usable"] is True
    assert d["extension"]["loaded"] == ext.ok
    assert d["backends"]["cpp"]["usable"] == ext.ok
    if ext.ok:
        assert d["extension"]["error"] is None
        assert d["extension"]["build"]["torch"] == torch.__version__
        assert "with_cuda" in d["extension"]["build"]
    else:
        assert d["extension"]["error"]  # the load failure is kept and reported
    if not torch.cuda.is_available():
        assert d["backends"]["cuda"]["usable"] is False and d["backends"]["cuda"]["detail"]
    for key in ("python", "triton", "compiler", "nvcc", "device"):
        assert key in d
    text = format_info(d)
    assert "extension fastgeom._C: " + ("loaded" if ext.ok else "NOT loaded") in text
    assert "backends:" in text and "torch   usable" in text


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "fastgeom", "info", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_info_reports_extension():
    out = _run_cli("--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["torch"] == torch.__version__
    assert d["extension"]["loaded"] == ext.ok  # same installation as this process
    assert d["extension"]["build"] == {
        k: (v if isinstance(v, (bool, int)) else str(v)) for k, v in ext.build_info().items()
    }
    out = _run_cli()
    assert out.returncode == 0, out.stderr
    assert "extension fastgeom._C:" in out.stdout and "backends:" in out.stdout
