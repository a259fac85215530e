"""CIFAR-10 ResNet (GELU or ReLU in every block): how training shapes the volume element of the
penultimate features (avgpool, a submersion of the input images) and of each block.

Full (paper): ResNet-34, SGD lr 0.01 momentum 0.9 wd 1e-4, batch 1024, 200 epochs, no schedule,
RandomCrop(32, pad 4) + flip + normalisation; 64-step paths, 80x80 planes, blocks pooled to 512.
Quick (CPU minutes): ResNet-18 of width 8 (64 features) on 16x16 images, 2000 training images
(the procedural stand-in unless CIFAR-10 is under --data-root), 16-point paths, small planes,
blocks pooled to 64. Figures: paths over epochs, convex-hull and affine planes (prediction,
normalised softmax entropy, log10 vol), same-class planes, per-block logvol, spectra at anchors, and
(beyond the paper) the Gaussian curvature of every plane beside its log volume (``plane_curvature``),
with ``curvature_boundary_ratio`` / ``volume_boundary_ratio`` in the summary (``_cifar_eval``).

    python -m experiments.cifar --quick --out runs/cifar-quick [--activation relu]
    python -m experiments.cifar --full --data-root data --download --out runs/cifar-gelu
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from experiments import _cifar_data as D
from experiments import _cifar_eval as E
from experiments._plots_cifar import make_figures
from experiments.common import Run, parser, seed_everything
from fastgeom.models import cifar_resnet


def build_parser():
    p = parser("cifar", __doc__)
    p.add_argument("--activation", choices=["gelu", "relu"], default="gelu")
    E.add_size_args(p)
    return p


def main(argv=None) -> Run:
    args = build_parser().parse_args(argv)
    with E.threads(args.threads):
        return _main(args)


def _main(args) -> Run:
    size = E.size_of(args)
    sz = E.SIZES[size]
    epochs, snaps, plane_eps = E.schedule(args, size, 200, [0, 1, 5, 20, 50, 100, 200], [0, 20])
    geo = E.geo_config(sz, args)
    config = {
        "size": size,
        "activation": args.activation,
        **sz,
        "epochs": epochs,
        "snapshots": snaps,
        "plane_epochs": plane_eps,
        "optimizer": "SGD",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": args.batch_size or {"full": 1024, "quick": 128, "tiny": 32}[size],
        "augment": "RandomCrop(res, pad res/8) + flip + normalise",
        "geometry": geo.__dict__,
        "seed": args.seed,
    }
    seed_everything(args.seed)
    run = Run("cifar", args, config)
    data = D.load_for(args, sz)
    run.summary(data=data.name)
    title = f"ResNet ({sz['arch']}, width {sz['width']}, {args.activation}) on {data.name}"
    dev = torch.device(args.device)
    model = cifar_resnet(sz["arch"], args.activation, 10, width=sz["width"]).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(
        D.TensorImages(data.train_x, data.train_y, D.supervised_transform(sz["res"])),
        batch_size=config["batch_size"],
        shuffle=True,
        drop_last=False,
        num_workers=sz["workers"] if args.device != "cpu" else 0,
        pin_memory=dev.type == "cuda",
    )
    test_x = D.normalize(data.test_x)
    losses = []

    def train_epoch(ep):
        model.train()
        tot, n = 0.0, 0
        for x, y in tqdm(loader, desc=f"epoch {ep}", leave=False, disable=not run.progress):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + float(loss.detach()) * len(y), n + len(y)
        losses.append({"epoch": ep, "train_loss": tot / n})

    @torch.no_grad()
    def accuracy(x, y):
        model.eval()
        pred = torch.cat([model(x[i : i + 512].to(dev)).argmax(1).cpu() for i in range(0, len(x), 512)])
        return float((pred == y).double().mean())

    anchors = E.pick_anchors(data.test_y, geo, seed=args.seed)
    run.summary(anchors=anchors)
    geo_model = cifar_resnet(sz["arch"], args.activation, 10, width=sz["width"])  # CPU/GPU copy for geometry
    for epoch in run.snapshot_loop(model, opt, snaps, train_epoch):
        key = f"epoch_{epoch}"
        if run.has(key):
            continue
        geo_model.load_state_dict(model.state_dict())
        geo_model.to(dev).eval()
        rec = {
            "test_acc": accuracy(test_x, data.test_y),
            "train_acc": accuracy(D.normalize(data.train_x[:2000]), data.train_y[:2000]),
            "train_losses": [l for l in losses],
        }
        losses.clear()
        print(f"[cifar] epoch {epoch}: train acc {rec['train_acc']:.3f}, test acc {rec['test_acc']:.3f}", flush=True)
        maps = [E.GeoMap("euclidean", geo_model, "avgpool")]
        rec["geometry"] = E.snapshot(
            maps, geo_model, test_x.to(dev), anchors, geo, planes=epoch in plane_eps, progress=run.progress
        )
        run.record(key, rec)
    make_figures(run, data.classes, data.test_y, title, ["euclidean"])
    last = run.results["records"][f"epoch_{epochs}"]
    run.summary(
        final_test_acc=last["test_acc"],
        final_train_acc=last["train_acc"],
        curvature_boundary_ratio={
            e: {
                n: pl.get("curvature_boundary_ratio", {}).get("euclidean")
                for n, pl in run.results["records"][f"epoch_{e}"]["geometry"]["planes"].items()
            }
            for e in plane_eps
            if f"epoch_{e}" in run.results["records"]
        },
        volume_boundary_ratio={
            e: {
                n: pl.get("volume_boundary_ratio", {}).get("euclidean")
                for n, pl in run.results["records"][f"epoch_{e}"]["geometry"]["planes"].items()
            }
            for e in plane_eps
            if f"epoch_{e}" in run.results["records"]
        },
    )
    print(f"[cifar] done in {run.results['wall_seconds']} s; results in {run.out}")
    return run


if __name__ == "__main__":
    main(sys.argv[1:])
