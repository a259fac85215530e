"""Shared driver machinery: arguments, output folder, incremental results.json, per-snapshot
checkpoints with resume, and figure saving (PNG, plus PDF in full runs).

Usage pattern in a driver::

    args = parser("xor", __doc__).parse_args(argv)
    run = Run(args, config={...})
    for epoch in run.snapshot_loop(model, opt, epochs, snapshots, train_one_epoch):
        run.record(f"epoch_{epoch}", evaluate(model))   # skipped when resuming if already recorded
    run.savefig(fig, "heatmaps")

Epoch 0 is the network at initialisation (the original code snapshotted after one epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch


def parser(name: str, doc: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="offline CPU configuration (default)")
    mode.add_argument("--full", action="store_true", help="the paper's configuration")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>-quick|full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--data-root",
        default=os.environ.get("FASTGEOM_DATA", "data"),
        help="where torchvision datasets live (default ./data or $FASTGEOM_DATA)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """An experiment's output folder: results.json (rewritten atomically after every record),
    ``ckpt/`` with one checkpoint per snapshot, and figures."""

    def __init__(self, name: str, args: argparse.Namespace, config: dict):
        self.name = name
        self.args = args
        self.mode = "full" if getattr(args, "full", False) else "quick"
        self.out = args.out or os.path.join("runs", f"{name}-{self.mode}")
        self.progress = not getattr(args, "quiet", False)
        os.makedirs(os.path.join(self.out, "ckpt"), exist_ok=True)
        self.results_path = os.path.join(self.out, "results.json")
        fresh = getattr(args, "no_resume", False) or not os.path.exists(self.results_path)
        if fresh:
            self.results = {"experiment": name, "mode": self.mode, "config": config, "records": {}, "figures": []}
        else:
            with open(self.results_path) as f:
                self.results = json.load(f)
            if self.results.get("config") != json.loads(json.dumps(config)):
                raise ValueError(
                    f"{self.results_path} was written with another configuration; "
                    "use a new --out or pass --no-resume to start over"
                )
        self.results["started"] = self.results.get("started") or time.strftime("%Y-%m-%d %H:%M:%S")
        self._t0, self._wall0 = time.time(), float(self.results.get("wall_seconds", 0.0))
        self.save()

    # -- results -------------------------------------------------------------------------------
    def save(self) -> None:
        self.results["wall_seconds"] = round(self._wall0 + time.time() - self._t0, 1)
        tmp = self.results_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1, default=_jsonable)
        os.replace(tmp, self.results_path)

    def has(self, key: str) -> bool:
        return key in self.results["records"]

    def record(self, key: str, value) -> None:
        self.results["records"][key] = value
        self.save()

    def summary(self, **kv) -> None:
        self.results.setdefault("summary", {}).update(kv)
        self.save()

    # -- checkpoints ---------------------------------------------------------------------------
    def ckpt_path(self, epoch: int) -> str:
        return os.path.join(self.out, "ckpt", f"epoch_{epoch:06d}.pt")

    def save_ckpt(self, epoch: int, model: torch.nn.Module, opt=None, extra: dict | None = None) -> None:
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "opt": opt.state_dict() if opt is not None else None,
            "rng": torch.get_rng_state(),
            "extra": extra or {},
        }
        tmp = self.ckpt_path(epoch) + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path(epoch))

    def load_ckpt(self, epoch: int, model: torch.nn.Module, opt=None) -> dict:
        state = torch.load(self.ckpt_path(epoch), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        if opt is not None and state["opt"] is not None:
            opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        return state["extra"]

    def latest_ckpt(self, epochs: Iterable[int]) -> int | None:
        if getattr(self.args, "no_resume", False):
            return None
        have = [e for e in epochs if os.path.exists(self.ckpt_path(e))]
        return max(have) if have else None

    def snapshot_loop(
        self, model: torch.nn.Module, opt, snapshots: list[int], train_epoch: Callable[[int], None], desc: str = "train"
    ) -> Iterator[int]:
        """Yield each snapshot epoch (0 = initialisation) with the model in that state, training
        between snapshots and checkpointing at each; resumes from the latest checkpoint."""
        from tqdm.auto import tqdm

        snapshots = sorted(set([0] + list(snapshots)))
        start = self.latest_ckpt(snapshots)
        if start is None:
            self.save_ckpt(0, model, opt)
            start = 0
        # replay snapshots up to `start` from their checkpoints (for evaluations not yet recorded)
        for e in [s for s in snapshots if s <= start]:
            self.load_ckpt(e, model, opt)
            yield e
        self.load_ckpt(start, model, opt)
        epoch = start
        bar = tqdm(total=snapshots[-1], initial=start, desc=desc, unit="ep", disable=not self.progress)
        for target in [s for s in snapshots if s > start]:
            while epoch < target:
                epoch += 1
                train_epoch(epoch)
                bar.update(1)
            self.save_ckpt(epoch, model, opt)
            yield epoch
        bar.close()

    # -- figures -------------------------------------------------------------------------------
    def savefig(self, fig, name: str) -> str:
        import matplotlib.pyplot as plt

        png = os.path.join(self.out, f"{name}.png")
        fig.savefig(png, dpi=110, bbox_inches="tight")
        if self.mode == "full":
            fig.savefig(os.path.join(self.out, f"{name}.pdf"), bbox_inches="tight")
        plt.close(fig)
        if name not in self.results["figures"]:
            self.results["figures"].append(name)
            self.save()
        return png


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
