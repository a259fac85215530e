"""Models used by the experiments: CIFAR-style ResNets with a chosen activation everywhere.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.
"""

from .resnet import ACTIVATIONS, cifar_resnet

__all__ = ["cifar_resnet", "ACTIVATIONS"]
