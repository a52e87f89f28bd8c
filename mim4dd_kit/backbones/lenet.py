"""LeNet as in the DC code base (VICO-UoE/DatasetCondensation ``networks.py``).

Layout::

    conv(C -> 6, 5x5, padding 2 on 1-channel input, else 0) -> act -> maxpool 2
    conv(6 -> 16, 5x5)                                      -> act -> maxpool 2
    fc(16 * h * w -> 120) -> act -> fc(120 -> 84) -> act -> fc(84 -> num_classes)

The padding of 2 on grey input makes a 1x28x28 image behave like the classic 32x32 one,
so both 1x28x28 and 3x32x32 reach 16x5x5 = 400 features after the conv stages (the
reference's hard-coded ``16 * 5 * 5``); here the size follows from arithmetic, so other
image sizes work too. The reference uses ReLU everywhere.

Blocks (what ``features`` returns): the two conv stages ``(B, 6, h1, w1)`` and
``(B, 16, h2, w2)``, then the two hidden fc layers ``(B, 120)`` and ``(B, 84)``;
``classifier`` is the last fc. Feature taps: ``pre_activation`` is each block's conv (or
fc) output before its activation, ``pre_pool`` the activation's output (before the
max-pool in the conv stages; the output itself in the fc blocks).
"""

from __future__ import annotations

from torch import nn

from ..api import Backbone
from ..core.errors import BuildError
from ._checks import check_context
from .params import LeNetParams


def _activation(kind: str) -> nn.Module:
    # not in place: block outputs are handed to consumers (regularizers) as features
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[kind]()


def _conv_pool_size(n: int, pad: int) -> int:
    """Side length after a 5x5 conv (stride 1, ``pad``) and a 2x2 stride-2 max pool."""
    return (n + 2 * pad - 4) // 2


class LeNet(Backbone):
    """LeNet-5: 2 conv stages + 2 hidden fc layers (DatasetCondensation networks.py)."""

    Params = LeNetParams

    def __init__(
        self,
        params: LeNet.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        check_context("LeNet", channels, num_classes, image_size)
        self.params = params
        pad = 2 if channels == 1 else 0  # reference: 28x28 grey input acts as 32x32
        h1, w1 = (_conv_pool_size(n, pad) for n in image_size)
        h2, w2 = _conv_pool_size(h1, 0), _conv_pool_size(w1, 0)
        if min(h1, w1, h2, w2) < 1:
            raise BuildError(
                f"LeNet's two 5x5 conv stages need larger images than "
                f"{image_size[0]}x{image_size[1]} (at least 12x12 grey or 16x16 colour)"
            )
        act = params.activation
        self._shapes: list[tuple[int, ...]] = [(6, h1, w1), (16, h2, w2), (120,), (84,)]
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, 6, 5, padding=pad), _activation(act),
                          nn.MaxPool2d(2, 2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), _activation(act), nn.MaxPool2d(2, 2)),
            nn.Sequential(nn.Flatten(), nn.Linear(16 * h2 * w2, 120), _activation(act)),
            nn.Sequential(nn.Linear(120, 84), _activation(act)),
        ])
        self.classifier = nn.Linear(84, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each block's output shape without the batch dimension."""
        return list(self._shapes)
