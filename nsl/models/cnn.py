"""A small conv-BN-ReLU network: about a hundred filters for 8×8 digits, a few hundred for 32×32 shapes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, 2×2 max-pools after the blocks in ``pool_after``, global average pooling, a linear head.

    Args:
        channels: output channels of each conv block; their sum is the number of filters (players).
        num_classes: output logits.
        in_channels: input image channels.
        pool_after: indices of the blocks followed by a 2×2 max-pool ((1,) for 8×8 digits; (0, 1, 2) takes
            32×32 images to 4×4 over four blocks).
    """

    def __init__(
        self, channels: Sequence[int] = (24, 32, 48), num_classes: int = 10, in_channels: int = 1,
        pool_after: Sequence[int] = (1,),
    ) -> None:
        super().__init__()
        bad = [i for i in pool_after if not 0 <= int(i) < len(channels)]
        if bad:
            raise ValueError(f"pool_after={list(pool_after)} names blocks {bad}; blocks are 0..{len(channels) - 1}.")
        layers: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i in {int(j) for j in pool_after}:
                layers.append(nn.MaxPool2d(2))
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
