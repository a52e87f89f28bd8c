"""The MLP of the DC code base: flatten -> [fc-ReLU] x depth -> fc."""

from __future__ import annotations

import math

from pydantic import Field
from torch import Tensor, nn

from ..contracts import Backbone, Params


class MLP(Backbone):
    """Fully connected network (DC code base's MLP: two hidden layers of 128)."""

    class Params(Params):
        width: int = Field(128, gt=0, description="hidden units per layer")
        depth: int = Field(2, gt=0, description="hidden layers (blocks)")

    def __init__(self, params: MLP.Params, *, channels: int, num_classes: int,
                 image_size: tuple[int, int]):
        super().__init__()
        d_in = channels * math.prod(image_size)
        dims = [d_in] + [params.width] * params.depth
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.ReLU(inplace=True))
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self._shapes = [(params.width,)] * params.depth
        self.classifier = nn.Linear(params.width, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        return list(self._shapes)

    def features(self, x: Tensor) -> list[Tensor]:  # K x (B, width)
        x = x.flatten(1)
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def classify(self, last: Tensor) -> Tensor:
        return self.classifier(last)
