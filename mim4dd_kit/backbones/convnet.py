"""The dataset-distillation standard ConvNet (MIM4DD paper section 3.1; DC/DSA/DM/MTT).

Layout, following ``ConvNet`` in VICO-UoE/DatasetCondensation ``networks.py``: ``depth``
blocks of Conv 3x3 (``width`` channels, padding 1) -> norm -> activation -> pool 2x2
stride 2, then one linear classifier on the flattened last block.

Two details of the reference code are kept on purpose:

- on 1-channel input the *first* conv pads by 3 instead of 1, so 28x28 images become
  32x32 after it and the classifier sees ``128 x 4 x 4 = 2048`` features (Fashion-MNIST
  ConvNet: 317,706 parameters);
- "instance norm" is ``GroupNorm(width, width, affine=True)`` (one group per channel),
  i.e. instance norm with a learnable per-channel affine, identical in train and eval.

The reference code hard-codes "28x28 -> 32x32"; here every block's output size follows
from the padding by arithmetic, which agrees with it on 1x28x28 and stays right for other
sizes.

Feature taps (``features(x, tap=...)``): ``pre_activation`` is each block's conv+norm
output, ``pre_pool`` its activation output before the 2x2 pool (the output itself with
``pooling: none``).
"""

from __future__ import annotations

from torch import nn

from ..api import Backbone
from ..core.errors import BuildError
from ._checks import check_context
from .params import ConvNetD4Params, ConvNetParams
from .pooling import AvgPool2x2


def make_norm(kind: str, width: int) -> nn.Module | None:
    """The normalisation layer of one block, or None for ``none``."""
    if kind == "instance":
        # per sample, per channel over (H, W), with a per-channel affine (reference code)
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "layer":
        # per sample over (C, H, W); per-channel affine (the reference uses a full
        # elementwise LayerNorm, which would tie the layer to one image size)
        return nn.GroupNorm(1, width, affine=True)
    if kind == "group":
        if width % 4:
            raise ValueError(f"norm 'group' uses 4 groups and needs width % 4 == 0, got {width}")
        return nn.GroupNorm(4, width, affine=True)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}")


def make_activation(kind: str) -> nn.Module:
    # not in place: block outputs are handed to consumers (regularizers) as features
    if kind == "relu":
        return nn.ReLU()
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    if kind == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {kind!r}")


def make_pool(kind: str) -> nn.Module | None:
    if kind == "avg":
        return AvgPool2x2()
    if kind == "max":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if kind == "none":
        return None
    raise ValueError(f"unknown pooling {kind!r}")


class ConvNet(Backbone):
    """DD-standard ConvNet, depth x [Conv3x3-Norm-Act-Pool2] + fc (DatasetCondensation)."""

    Params = ConvNetParams

    def __init__(
        self,
        params: ConvNet.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        check_context("ConvNet", channels, num_classes, image_size)
        self.params = params
        h, w = image_size
        in_ch = channels
        blocks: list[nn.Sequential] = []
        shapes: list[tuple[int, int, int]] = []
        for k in range(params.depth):
            # reference code: grey images get padding 3 on the first conv (28 -> 32)
            pad = 3 if channels == 1 and k == 0 else 1
            layers: list[nn.Module] = [nn.Conv2d(in_ch, params.width, 3, padding=pad)]
            h, w = h + 2 * pad - 2, w + 2 * pad - 2  # 3x3 conv, stride 1
            norm = make_norm(params.norm, params.width)
            if norm is not None:
                layers.append(norm)
            layers.append(make_activation(params.activation))
            pool = make_pool(params.pooling)
            if pool is not None:
                layers.append(pool)
                h, w = h // 2, w // 2  # 2x2 stride 2, floor
            if h < 1 or w < 1:
                raise BuildError(
                    f"depth {params.depth} is too deep for {image_size[0]}x{image_size[1]} "
                    f"images: the feature map reaches {h}x{w} at block {k + 1}; use a "
                    f"smaller depth or pooling: none"
                )
            blocks.append(nn.Sequential(*layers))
            shapes.append((params.width, h, w))
            in_ch = params.width
        self.blocks = nn.ModuleList(blocks)
        self._shapes = shapes
        self.classifier = nn.Linear(params.width * h * w, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each block's output shape without the batch dimension, ``(width, h_k, w_k)``."""
        return list(self._shapes)



class ConvNetD4(ConvNet):
    """ConvNet with 4 blocks by default, for 64x64 inputs (DatasetCondensation ConvNetD4)."""

    Params = ConvNetD4Params
