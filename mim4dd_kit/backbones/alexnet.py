"""The DC code base's small AlexNet for 32x32 images (VICO-UoE/DatasetCondensation).

Layout, following ``AlexNet`` / ``AlexNetBN`` in ``networks.py``::

    conv 128 k5 pad (4 on 1-channel input, else 2) -> [norm] -> ReLU -> maxpool 2
    conv 192 k5 pad 2                              -> [norm] -> ReLU -> maxpool 2
    conv 256 k3 pad 1 -> [norm] -> ReLU
    conv 192 k3 pad 1 -> [norm] -> ReLU
    conv 192 k3 pad 1 -> [norm] -> ReLU -> maxpool 2
    fc (192 * h * w -> num_classes)

Padding 4 turns 28x28 grey images into 32x32 after the first conv, so both 1x28x28 and
3x32x32 reach 192x4x4 = 3072 features, as the reference's hard-coded ``192 * 4 * 4``.
The blocks are the three stages closed by a max-pool, so ``features`` returns 3 tensors.
The reference ``AlexNet`` has no normalisation (``norm: none``) and ``AlexNetBN`` batch
norm after every conv (``norm: batch``); ``instance`` is GroupNorm(C, C, affine=True).
Feature taps: ``pre_activation`` is a stage's last conv(+norm) before its ReLU,
``pre_pool`` that ReLU's output before the stage's max-pool.
"""

from __future__ import annotations

from torch import nn

from ..api import Backbone
from ..core.errors import BuildError
from ._checks import check_context
from .convnet import make_norm
from .params import AlexNetParams

#: (out channels, kernel, padding, max-pool after) of each conv; the first conv's
#: padding is 4 instead of 2 on 1-channel input
_LAYERS = ((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False),
           (192, 3, 1, True))


class AlexNet(Backbone):
    """Small AlexNet, 5 convs in 3 max-pooled stages + fc (DatasetCondensation AlexNet)."""

    Params = AlexNetParams

    def __init__(
        self,
        params: AlexNet.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        check_context("AlexNet", channels, num_classes, image_size)
        self.params = params
        h, w = image_size
        in_ch = channels
        blocks: list[nn.Sequential] = []
        shapes: list[tuple[int, int, int]] = []
        stage: list[nn.Module] = []
        for i, (out_ch, k, pad, pool) in enumerate(_LAYERS):
            if i == 0 and channels == 1:
                pad = 4  # reference: grey 28x28 -> 32x32 after the first conv
            stage.append(nn.Conv2d(in_ch, out_ch, k, padding=pad))
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1  # stride 1
            norm = make_norm(params.norm, out_ch)
            if norm is not None:
                stage.append(norm)
            stage.append(nn.ReLU())  # not in place: block outputs are features
            in_ch = out_ch
            if pool:
                stage.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise BuildError(
                        f"AlexNet needs larger images than {image_size[0]}x{image_size[1]}: "
                        f"the feature map reaches {h}x{w} at block {len(blocks) + 1}"
                    )
                blocks.append(nn.Sequential(*stage))
                shapes.append((out_ch, h, w))
                stage = []
        self.blocks = nn.ModuleList(blocks)
        self._shapes = shapes
        self.classifier = nn.Linear(in_ch * h * w, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each block's output shape without the batch dimension (3 blocks)."""
        return list(self._shapes)
