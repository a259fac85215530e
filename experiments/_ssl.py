"""Shared driver of the self-supervised experiments (barlow_twins, simclr): train a CIFAR ResNet
backbone with the method's loss on two augmented views, then at every snapshot fit the linear probe
(multinomial logistic regression, C = 1) on backbone features and measure the backbone's geometry with
boundaries and entropies from the probe."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from experiments import _cifar_data as D
from experiments import _cifar_eval as E
from experiments._plots_cifar import make_figures
from experiments.common import Run, parser, seed_everything
from fastgeom.models import cifar_resnet, ssl
from fastgeom.probe import LinearProbe, extract_features

METHODS = {
    "barlow_twins": dict(
        cls=ssl.BarlowTwins,
        augment=ssl.barlow_twins_augmentations,
        full_batch=1024,
        head=dict(proj_dim=256, lambd=0.005),
        maps=("euclidean",),
        head_doc="linear projector 512 -> 256, lambda 0.005",
    ),
    "simclr": dict(
        cls=ssl.SimCLR,
        augment=ssl.simclr_augmentations,
        full_batch=512,
        head=dict(proj_dim=128, temperature=0.07),
        maps=("euclidean", "sphere", "head_sphere"),
        head_doc="MLP head F -> F -> 128, NT-Xent temperature 0.07",
    ),
}


def run_ssl(method: str, doc: str, argv=None) -> Run:
    spec = METHODS[method]
    p = parser(method, doc)
    E.add_size_args(p)
    p.add_argument("--activation", choices=["gelu", "relu"], default="gelu")
    args = p.parse_args(argv)
    with E.threads(args.threads):
        return _run(method, spec, args)


def _run(method, spec, args) -> Run:
    size = E.size_of(args)
    sz = E.SIZES[size]
    epochs, snaps, plane_eps = E.schedule(args, size, 1000, [0, 10, 50, 100, 250, 500, 1000], [0, 100])
    geo = E.geo_config(sz, args)
    head = dict(spec["head"])
    if size != "full":  # narrow backbones (8 * width features): keep the head below the feature dimension so the
        # head's sphere pullback has full rank (otherwise it factors through fewer dimensions than it has)
        head["proj_dim"] = min(head["proj_dim"], 4 * sz["width"])
    config = {
        "size": size,
        "method": method,
        "activation": args.activation,
        **sz,
        "epochs": epochs,
        "snapshots": snaps,
        "plane_epochs": plane_eps,
        "head": head,
        "head_doc": spec["head_doc"],
        "optimizer": "SGD",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": args.batch_size or {"full": spec["full_batch"], "quick": 128, "tiny": 32}[size],
        "probe": "multinomial logistic regression, C=1, standardised backbone features",
        "geometry": geo.__dict__,
        "seed": args.seed,
    }
    seed_everything(args.seed)
    run = Run(method, args, config)
    data = D.load_for(args, sz)
    run.summary(data=data.name)
    title = f"{method} ({sz['arch']}, width {sz['width']}, {args.activation}) on {data.name}"
    dev = torch.device(args.device)
    model = spec["cls"](cifar_resnet(sz["arch"], args.activation, None, width=sz["width"]), **head).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    t1, t2 = spec["augment"](sz["res"])
    loader = DataLoader(
        D.TensorImages(data.train_x, data.train_y, t1, t2),
        batch_size=config["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=sz["workers"] if args.device != "cpu" else 0,
        pin_memory=dev.type == "cuda",
    )
    norm = dict(mean=ssl.IMAGENET_MEAN, std=ssl.IMAGENET_STD)
    train_x, test_x = D.normalize(data.train_x, **norm), D.normalize(data.test_x, **norm)
    losses = []

    def train_epoch(ep):
        model.train()
        tot, n = 0.0, 0
        for x1, x2, _ in tqdm(loader, desc=f"epoch {ep}", leave=False, disable=not run.progress):
            loss = model.loss(x1.to(dev, non_blocking=True), x2.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + float(loss.detach()) * len(x1), n + len(x1)
        losses.append({"epoch": ep, "train_loss": tot / max(n, 1)})

    anchors = E.pick_anchors(data.test_y, geo, seed=args.seed)
    run.summary(anchors=anchors)
    geo_model = spec["cls"](cifar_resnet(sz["arch"], args.activation, None, width=sz["width"]), **head)
    for epoch in run.snapshot_loop(model, opt, snaps, train_epoch):
        key = f"epoch_{epoch}"
        if run.has(key):
            continue
        geo_model.load_state_dict(model.state_dict())
        geo_model.to(dev).eval()
        bb = geo_model.backbone
        probe = LinearProbe(C=1.0).fit(extract_features(bb, train_x), data.train_y)
        f_test = extract_features(bb, test_x)
        rec = {
            "probe_train_acc": probe.accuracy(extract_features(bb, train_x), data.train_y),
            "probe_test_acc": probe.accuracy(f_test, data.test_y),
            "probe_converged": probe.converged,
            "train_losses": list(losses),
        }
        losses.clear()
        print(
            f"[{method}] epoch {epoch}: probe train acc {rec['probe_train_acc']:.3f}, "
            f"test acc {rec['probe_test_acc']:.3f}",
            flush=True,
        )
        lin = probe.linear.to(dev)

        def logits_fn(x, lin=lin, bb=bb):
            return lin(bb(x).flatten(1).double())

        maps = [E.GeoMap("euclidean", bb, "avgpool")]
        if "sphere" in spec["maps"]:
            maps.append(E.GeoMap("sphere", bb, "avgpool", "sphere"))
        if "head_sphere" in spec["maps"]:
            maps.append(E.GeoMap("head_sphere", geo_model, "projector", "sphere"))
        rec["geometry"] = E.snapshot(
            maps, logits_fn, test_x.to(dev), anchors, geo, planes=epoch in plane_eps, progress=run.progress
        )
        run.record(key, rec)
    make_figures(run, data.classes, data.test_y, title + " (boundaries: linear probe)", list(spec["maps"]))
    last = run.results["records"][f"epoch_{epochs}"]
    run.summary(final_probe_train_acc=last["probe_train_acc"], final_probe_test_acc=last["probe_test_acc"])
    print(f"[{method}] done in {run.results['wall_seconds']} s; results in {run.out}")
    return run
