"""LeNet as in the DC code base's cross-architecture experiments."""

from __future__ import annotations

from typing import Literal

from mim4dd_kit.contracts import Backbone, Params
from torch import Tensor, nn


class LeNet(Backbone):
    """LeNet-5 style network (two conv stages, two hidden fc layers)."""

    class Params(Params):
        activation: Literal["relu", "sigmoid"] = "relu"

    def __init__(self, params: LeNet.Params, *, channels: int, num_classes: int,
                 image_size: tuple[int, int]):
        super().__init__()
        act = nn.ReLU if params.activation == "relu" else nn.Sigmoid
        pad = 2 if channels == 1 else 0  # 28x28 grey input is treated as 32x32
        h = (image_size[0] + 2 * pad - 4) // 2
        h = (h - 4) // 2
        w = (image_size[1] + 2 * pad - 4) // 2
        w = (w - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"LeNet needs images of at least 28x28, got {image_size}")
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, 6, 5, padding=pad), act(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2), nn.Flatten()),
            nn.Sequential(nn.Linear(16 * h * w, 120), act()),
            nn.Sequential(nn.Linear(120, 84), act()),
        ])
        self.classifier = nn.Linear(84, num_classes)

    def features(self, x: Tensor) -> list[Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def classify(self, last: Tensor) -> Tensor:
        return self.classifier(last)
