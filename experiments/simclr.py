"""SimCLR on CIFAR-10: ResNet-34 GELU backbone, MLP projection head F -> F -> 128 (not the
classifier layer the original code reused), NT-Xent temperature 0.07, batch 512, 1000 epochs (full).
Geometry of the backbone features with the Euclidean pullback AND the round-sphere pullback
(logvol(..., target="sphere")), plus the sphere pullback of the head's normalised embedding;
boundaries from a multinomial logistic-regression probe (C = 1).

Quick (CPU minutes): ResNet-18 of width 8 on 16x16 images (the procedural stand-in unless CIFAR-10 is
under --data-root), 8 epochs, small slices; see experiments/_cifar_eval.SIZES.

    python -m experiments.simclr --quick --out runs/simclr-quick
    python -m experiments.simclr --full --data-root data --download --out runs/simclr-full
"""

from __future__ import annotations

import sys

from experiments._ssl import run_ssl


def main(argv=None):
    return run_ssl("simclr", __doc__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
