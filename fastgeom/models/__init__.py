"""Models used by the experiments: CIFAR-style ResNets with a chosen activation everywhere."""
from .resnet import ACTIVATIONS, cifar_resnet

__all__ = ["cifar_resnet", "ACTIVATIONS"]
