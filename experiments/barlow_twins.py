"""Barlow Twins on CIFAR-10: ResNet-34 GELU backbone, linear projector to 256, lambda 0.005, the
paper's asymmetric augmentations; SGD lr 0.01 wd 1e-4, batch 1024, 1000 epochs (full). Geometry of
the backbone features (avgpool), boundaries from a multinomial logistic-regression probe (C = 1).

Quick (CPU minutes): ResNet-18 of width 8 on 16x16 images (the procedural stand-in unless CIFAR-10 is
under --data-root), 8 epochs, small slices; see experiments/_cifar_eval.SIZES.

    python -m experiments.barlow_twins --quick --out runs/barlow_twins-quick
    python -m experiments.barlow_twins --full --data-root data --download --out runs/barlow_twins-full
"""

from __future__ import annotations

import sys

from experiments._ssl import run_ssl


def main(argv=None):
    return run_ssl("barlow_twins", __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
