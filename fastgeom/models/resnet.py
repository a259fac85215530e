"""CIFAR-style torchvision ResNets: 3x3 stride-1 stem, no max-pool, activation applied in EVERY block.

Research utility for the experiments (experiments/), not part of fastgeom's API: no stability promise.

The original code passed the activation only to the stem, so its "ReLU" ResNets were GELU inside
the residual blocks; here every nn.ReLU of the torchvision model is replaced.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

ARCHS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50, "resnet101": tvm.resnet101}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _replace_relu(module: nn.Module, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, make())
        else:
            _replace_relu(child, make)


def cifar_resnet(
    arch: str | int = "resnet34", activation: str = "gelu", num_classes: int | None = 10, width: int = 64
) -> nn.Module:
    """ResNet-18/34/50/101 for 32x32 inputs; features are 512 (18/34) or 2048 (50/101) after ``avgpool``.

    Layer names follow torchvision (``conv1``, ``layer1``..``layer4``, ``avgpool``, ``fc``), so
    ``fastgeom.logvol(model, x, layer="layer3", pool=512)`` gives the per-block readouts.
    ``num_classes=None`` makes ``fc`` the identity (the model then outputs the pooled features).
    ``width`` is the stem/layer1 channel count (64 is the standard net; stages have width * (1, 2, 4, 8)
    channels, times 4 for ResNet-50/101); small widths give the fast CPU stand-ins of the quick modes.
    """
    key = f"resnet{arch}" if isinstance(arch, int) else str(arch).lower()
    if key not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    model = ARCHS[key](weights=None, num_classes=num_classes or 1000)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (64 = standard ResNet), got {width!r}")
    if width != 64:  # rebuild the stages with torchvision's own _make_layer at the new width
        block = type(model.layer1[0])
        depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
        model.inplanes = width
        model.bn1 = nn.BatchNorm2d(width)
        for i, (mult, depth) in enumerate(zip((1, 2, 4, 8), depths), start=1):
            setattr(model, f"layer{i}", model._make_layer(block, width * mult, depth, stride=1 if i == 1 else 2))
        model.fc = nn.Linear(width * 8 * block.expansion, num_classes or 1000)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if num_classes is None:
        model.fc = nn.Identity()
    act = ACTIVATIONS[activation]
    _replace_relu(model, (lambda: act()) if activation == "gelu" else (lambda: act(inplace=False)))
    model.arch, model.activation = key, activation
    return model
