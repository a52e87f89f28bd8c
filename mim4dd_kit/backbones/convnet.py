"""The dataset-distillation standard ConvNet (DC/DSA/DM/MTT code bases; MIM4DD paper 3.1).

``depth`` blocks of Conv 3x3 (``width`` channels, padding 1) -> norm -> activation ->
pool 2x2, then one linear classifier. On 1-channel input the first conv pads by 3, so
28x28 images become 32x32 and the classifier sees 128x4x4 = 2048 features, as in
VICO-UoE/DatasetCondensation ``networks.py``. Instance norm is
``GroupNorm(width, width, affine=True)`` there, and here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ..contracts import Backbone, Params


def _norm(kind: str, width: int) -> nn.Module:
    return {
        "instance": lambda: nn.GroupNorm(width, width, affine=True),
        "batch": lambda: nn.BatchNorm2d(width),
        "layer": lambda: nn.GroupNorm(1, width, affine=True),
        "group": lambda: nn.GroupNorm(4, width, affine=True),
        "none": nn.Identity,
    }[kind]()


def _act(kind: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=True),
            "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
            "sigmoid": nn.Sigmoid}[kind]()


def _pool(kind: str) -> nn.Module:
    return {"avg": lambda: nn.AvgPool2d(2, 2), "max": lambda: nn.MaxPool2d(2, 2),
            "none": nn.Identity}[kind]()


class ConvNet(Backbone):
    """The DD-standard ConvNet: depth x [Conv3x3-Norm-Act-Pool2] + linear classifier."""

    class Params(Params):
        width: int = Field(128, gt=0, description="channels of every conv (paper: 128)")
        depth: int = Field(3, gt=0, description="number of blocks (paper: 3)")
        norm: Literal["instance", "batch", "layer", "group", "none"] = "instance"
        activation: Literal["relu", "leakyrelu", "sigmoid"] = "relu"
        pooling: Literal["avg", "max", "none"] = "avg"

    def __init__(self, params: ConvNet.Params, *, channels: int, num_classes: int,
                 image_size: tuple[int, int]):
        super().__init__()
        p = params
        h, w = image_size
        blocks, shapes, in_ch = [], [], channels
        for d in range(p.depth):
            pad = 3 if (channels == 1 and d == 0) else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers = [nn.Conv2d(in_ch, p.width, 3, padding=pad), _norm(p.norm, p.width),
                      _act(p.activation)]
            if p.pooling != "none":
                layers.append(_pool(p.pooling))
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"depth {p.depth} shrinks {image_size[0]}x{image_size[1]} images to "
                    f"nothing at block {d + 1}; use a smaller depth or pooling: none"
                )
            blocks.append(nn.Sequential(*layers))
            shapes.append((p.width, h, w))
            in_ch = p.width
        self.blocks = nn.ModuleList(blocks)
        self._shapes = shapes
        self.classifier = nn.Linear(p.width * h * w, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Per-block output shape without the batch dimension."""
        return list(self._shapes)

    def features(self, x: Tensor) -> list[Tensor]:  # K x (B, width, h_k, w_k)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def classify(self, last: Tensor) -> Tensor:  # (B, width, h, w) -> (B, classes)
        return self.classifier(last.flatten(1))
