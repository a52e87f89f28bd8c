"""The MLP of the DC code base (VICO-UoE/DatasetCondensation ``networks.py``).

flatten -> [fc ``width`` -> ReLU] x ``depth`` -> fc ``num_classes``; the reference is
width 128, depth 2. Each hidden layer is one block, so ``features`` returns ``depth``
tensors of shape (B, width).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..api import Backbone, Tap
from ..core.errors import BuildError
from .params import MLPParams


class MLP(Backbone):
    """Fully connected net, flatten -> depth x [fc-ReLU] -> fc (DatasetCondensation MLP)."""

    Params = MLPParams

    def __init__(
        self,
        params: MLP.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        in_features = channels * math.prod(image_size)
        if in_features < 1 or num_classes < 1:
            raise BuildError(
                f"MLP needs positive channels, classes and image size; got channels="
                f"{channels}, num_classes={num_classes}, image_size={image_size}"
            )
        self.params = params
        dims = [in_features] + [params.width] * params.depth
        # ReLU not in place: block outputs are handed out as features
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )
        self.classifier = nn.Linear(params.width, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each block's output shape without the batch dimension, ``(width,)``."""
        return [(self.params.width,)] * self.params.depth

    def features(self, x: Tensor, tap: Tap = "output") -> list[Tensor]:
        """(B, C, H, W) -> K tensors (B, width), one per hidden layer.

        No block pools, so ``pre_pool`` equals ``output``; ``pre_activation`` is each fc
        layer's output before its ReLU.
        """
        return super().features(x.flatten(1), tap)  # (B, C*H*W) into the fc blocks
