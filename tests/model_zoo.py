"""Small-config torchvision families and tuple-module branches (random init, float64, eval mode), shared by
tests/test_model_families.py and bench/model_families.py. Nothing is downloaded.

``FAMILIES[name]() -> (model, x)``: a model in eval mode with randomised BatchNorm statistics and a few
points x (P, *input_shape), both float64, small enough that an independent float64 J takes seconds.
"""

from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

D = torch.float64


def randomise_norms(m: nn.Module, seed: int = 1) -> nn.Module:
    """Random BatchNorm running statistics and affine parameters (init values make BN nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g, dtype=D) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g, dtype=D) + 0.5)
                if mod.weight is not None:
                    mod.weight.copy_(torch.rand(n, generator=g, dtype=D) + 0.5)
                    mod.bias.copy_(torch.rand(n, generator=g, dtype=D) - 0.5)
    return m


def _prep(m: nn.Module, shape: tuple, points: int = 2, seed: int = 0):
    m = randomise_norms(m.to(D)).eval()
    x = torch.randn(points, *shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return m, x


def resnet18():
    torch.manual_seed(0)
    return _prep(tvm.resnet18(num_classes=10), (3, 16, 16))


def mobilenet_v3_small():
    torch.manual_seed(0)
    return _prep(tvm.mobilenet_v3_small(num_classes=10), (3, 32, 32))


def efficientnet_b0():
    torch.manual_seed(0)
    return _prep(tvm.efficientnet_b0(num_classes=10), (3, 16, 16))


def regnet_y_400mf():
    torch.manual_seed(0)
    return _prep(tvm.regnet_y_400mf(num_classes=10), (3, 32, 32))


def densenet_small():
    torch.manual_seed(0)
    return _prep(
        DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10), (3, 32, 32)
    )


def shufflenet_v2_x0_5():
    torch.manual_seed(0)
    return _prep(tvm.shufflenet_v2_x0_5(num_classes=10), (3, 32, 32))


def convnext_small_config():
    torch.manual_seed(0)
    cfg = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return _prep(ConvNeXt(cfg, stochastic_depth_prob=0.1, num_classes=10), (3, 16, 16))


def swin_tiny_config():
    torch.manual_seed(0)
    return _prep(
        SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[2, 2],
            stochastic_depth_prob=0.1,
            num_classes=10,
        ),
        (3, 16, 16),
    )


def vit_small_config():
    torch.manual_seed(0)
    m = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
    nn.init.normal_(m.heads.head.weight, std=0.3)  # torchvision zero-initialises the head (J = 0)
    return _prep(m, (3, 32, 32))


class TupleBranch(nn.Module):
    """h = lin(x) + scale * branch(x) with a tuple-returning module (MHA / LSTM / GRU) on tokens (T, E)."""

    def __init__(self, kind: str, scale: float = 1.0, E: int = 4, out: int = 3):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.lin = nn.Linear(E, E)
        if kind == "mha":
            self.mod = nn.MultiheadAttention(E, 2, batch_first=True)
        elif kind == "lstm":
            self.mod = nn.LSTM(E, E, batch_first=True)
        else:
            self.mod = nn.GRU(E, E, batch_first=True)
        self.out = nn.Linear(E, out)

    def forward(self, x):
        if self.kind == "mha":
            b = self.mod(x, x, x, need_weights=False)[0]
        else:
            b = self.mod(x)[0]
        return self.out(torch.tanh(self.lin(x) + self.scale * b)).flatten(1)


def tuple_branch(kind: str, scale: float = 1.0, T: int = 3, E: int = 4, out: int = 3):
    """d_in = T*E, d_out = T*out (out > E: an immersion, forward mode by default)."""
    torch.manual_seed(0)
    return _prep(TupleBranch(kind, scale, E, out), (T, E))


def vit_tokens():
    """A one-block ViT whose token layer (5 x 48 = 240) is larger than its 3 x 8 x 8 = 192 input:
    forward mode through nn.MultiheadAttention. Returns (model, x, layer)."""
    torch.manual_seed(0)
    m, x = _prep(
        VisionTransformer(
            image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=48, mlp_dim=32, num_classes=10
        ),
        (3, 8, 8),
        points=1,
    )
    return m, x, "encoder.layers.encoder_layer_0"


FAMILIES = {
    "resnet18": resnet18,
    "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_b0": efficientnet_b0,
    "regnet_y_400mf": regnet_y_400mf,
    "densenet_small": densenet_small,
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5,
    "convnext_small_config": convnext_small_config,
    "swin_tiny_config": swin_tiny_config,
    "vit_small_config": vit_small_config,
}
