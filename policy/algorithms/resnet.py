"""A compact ResNet-18 in plain torch (torchvision is not a dependency), for ``structured_code``.

The torchvision layout: a 7 x 7 stride-2 convolution, batch norm, ReLU, 3 x 3 stride-2 max pool,
four stages of two :class:`BasicBlock` each with ``width, 2 width, 4 width, 8 width`` channels
(strides 1, 2, 2, 2; a 1 x 1 convolution with batch norm on the shortcut where the shape changes),
global average pooling and one linear head. ``width=64`` is ResNet-18 (11.2 M parameters with a
1000-way head); smaller widths keep the structure at a fraction of the cost.

Initialisation is torchvision's, draw for draw: for the same torch seed, ``ResNet18(n)`` holds
the same weights as torchvision's ``resnet18(num_classes=n)``. The modules are built in
torchvision's order (each layer's default initialisation draws from torch's generator as it is
built: the stem convolution, then per stage the shortcut convolution before the block's two
convolutions, then the head with PyTorch's default linear initialisation), and then, in module
order (``conv1``, ``conv2``, ``downsample`` within a block), every convolution is redrawn
Kaiming-normal (fan out, ReLU) and every batch norm set to weight 1 and bias 0; the head keeps its
default draw. :func:`resnet18_with_new_head` is what the authors' code builds per call site.

``forward(x, update_running_stats=False)`` normalises by the batch's statistics in train mode
without updating ``running_mean``, ``running_var`` and ``num_batches_tracked``: the same output
as the usual train-mode forward, and the network is not written to.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional

IMAGENET_CLASSES = 1000  # the width of torchvision's default head


def _norm(bn: nn.BatchNorm2d, x: Tensor, update_running_stats: bool) -> Tensor:
    if bn.training and not update_running_stats:
        return functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return bn(x)


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with batch norm and a residual connection; ``downsample`` (built by
    the caller, as torchvision does) maps the input onto the output's shape where they differ."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Sequential | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor, update_running_stats: bool = True) -> Tensor:
        out = self.relu(_norm(self.bn1, self.conv1(x), update_running_stats))
        out = _norm(self.bn2, self.conv2(out), update_running_stats)
        identity = x
        if self.downsample is not None:
            conv, bn = self.downsample
            identity = _norm(bn, conv(x), update_running_stats)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (``[2, 2, 2, 2]`` basic blocks) with ``n_outputs`` outputs."""

    def __init__(self, n_outputs: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(width, width, 1)
        self.layer2 = _stage(width, 2 * width, 2)
        self.layer3 = _stage(2 * width, 4 * width, 2)
        self.layer4 = _stage(4 * width, 8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, n_outputs)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: Tensor, update_running_stats: bool = True) -> Tensor:
        x = self.maxpool(self.relu(_norm(self.bn1, self.conv1(x), update_running_stats)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, update_running_stats)
        return self.fc(self.avgpool(x).flatten(1))


def _stage(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    """torchvision's ``_make_layer`` for two basic blocks: the shortcut is built before the first
    block."""
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
        )
    first = BasicBlock(in_channels, channels, stride, downsample)
    return nn.Sequential(first, BasicBlock(channels, channels))


def resnet18_with_new_head(n_outputs: int, width: int = 64) -> ResNet18:
    """The authors' per-site network (their ``CNN(num_classes)``): torchvision's ``resnet18()``,
    not pretrained, built with its 1000-way head, whose head is then replaced by a new
    ``Linear(8 * width, n_outputs)``. The discarded head's draws come before the convolutions'
    Kaiming draws and the new head's after all of them, so this is not ``ResNet18(n_outputs)``."""
    net = ResNet18(IMAGENET_CLASSES, width)
    net.fc = nn.Linear(net.fc.in_features, n_outputs)
    return net
