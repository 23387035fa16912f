"""A small conv-BN-ReLU network sized for 8×8 digits (about a hundred filters)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, a max-pool after the second, global average pooling and a linear head.

    Args:
        channels: output channels of each conv block; their sum is the number of filters (players).
        num_classes: output logits.
        in_channels: input image channels.
    """

    def __init__(self, channels: Sequence[int] = (24, 32, 48), num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i == 1:
                layers.append(nn.MaxPool2d(2))
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
