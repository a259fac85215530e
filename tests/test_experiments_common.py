"""experiments/common.py: incremental results, checkpoints per snapshot, resume after interruption."""

import json
import os

import pytest
import torch

from experiments.common import Run, parser


class Boom(RuntimeError):
    pass


def _setup(out, no_resume=False):
    args = parser("t").parse_args(["--out", str(out), "--quiet"] + (["--no-resume"] if no_resume else []))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    return args, model, opt, x, y


def _train(model, opt, x, y, stop_at=None):
    def step(epoch):
        if stop_at is not None and epoch == stop_at:
            raise Boom(f"interrupted at epoch {epoch}")
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _run(out, stop_at=None, no_resume=False):
    args, model, opt, x, y = _setup(out, no_resume)
    run = Run("t", args, {"a": 1})
    seen = []
    for ep in run.snapshot_loop(model, opt, [3, 6, 9], _train(model, opt, x, y, stop_at)):
        seen.append(ep)
        if not run.has(f"e{ep}"):
            run.record(f"e{ep}", {"w": model.weight.detach().tolist()})
    return run, model, seen


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    ref, ref_model, seen = _run(tmp_path / "ref")
    assert seen == [0, 3, 6, 9]
    with pytest.raises(Boom):
        _run(tmp_path / "cut", stop_at=8)
    # snapshots 0, 3, 6 were recorded and checkpointed before the interruption
    res = json.load(open(tmp_path / "cut" / "results.json"))
    assert sorted(res["records"]) == ["e0", "e3", "e6"]
    assert os.path.exists(tmp_path / "cut" / "ckpt" / "epoch_000006.pt")
    assert not os.path.exists(tmp_path / "cut" / "ckpt" / "epoch_000009.pt")
    run, model, seen = _run(tmp_path / "cut")
    assert seen == [0, 3, 6, 9]  # replayed from checkpoints, then trained 6 -> 9 only
    assert torch.allclose(model.weight, ref_model.weight, atol=0, rtol=0)
    for k in ("e0", "e3", "e6", "e9"):
        assert run.results["records"][k] == ref.results["records"][k]


def test_epoch0_is_initialisation(tmp_path):
    args, model, opt, x, y = _setup(tmp_path)
    w0 = model.weight.detach().clone()
    run = Run("t", args, {})
    it = run.snapshot_loop(model, opt, [2], _train(model, opt, x, y))
    assert next(it) == 0
    assert torch.equal(model.weight.detach(), w0)


def test_config_change_refuses_to_resume(tmp_path):
    _run(tmp_path)
    args = parser("t").parse_args(["--out", str(tmp_path), "--quiet"])
    with pytest.raises(ValueError, match="--no-resume"):
        Run("t", args, {"a": 2})
    run, _, seen = _run(tmp_path, no_resume=True)  # starting over is allowed
    assert seen == [0, 3, 6, 9]
