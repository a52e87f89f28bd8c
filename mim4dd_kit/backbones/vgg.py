"""VGG11 of the DC code base (VICO-UoE/DatasetCondensation ``networks.py``).

Configuration ``[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]``: every number is
Conv 3x3 (padding 1) -> norm -> ReLU, every ``M`` a 2x2 stride-2 max-pool; then one
``Linear(512 * h * w, num_classes)`` on the flattened output. As in the reference (and
the ConvNet), the *first* conv pads by 3 on 1-channel input, so 28x28 becomes 32x32 and
both 1x28x28 and 3x32x32 end at 512x1x1 (the reference's ``Linear(512, ...)``; its
trailing ``AvgPool2d(1, 1)`` is the identity and is left out).

Norm: ``instance`` is ``GroupNorm(C, C, affine=True)`` (the reference ``VGG11``),
``batch`` is ``BatchNorm2d`` (the reference ``VGG11BN``). The blocks are the five stages
between max-pools, each closed by its pool, so ``features`` returns 5 tensors. Feature
taps: ``pre_activation`` is a stage's last conv+norm before its ReLU, ``pre_pool`` that
ReLU's output before the max-pool.
"""

from __future__ import annotations

from torch import nn

from ..api import Backbone
from ..core.errors import BuildError
from ._checks import check_context
from .convnet import make_norm
from .params import VGG11Params

#: convs per stage; each stage ends with a 2x2 max-pool
_STAGES: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))


class VGG11(Backbone):
    """VGG11, 5 stages of [Conv3x3-Norm-ReLU]+MaxPool2 + fc (DatasetCondensation VGG11)."""

    Params = VGG11Params

    def __init__(
        self,
        params: VGG11.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        check_context("VGG11", channels, num_classes, image_size)
        self.params = params
        h, w = image_size
        in_ch = channels
        first = True
        blocks: list[nn.Sequential] = []
        shapes: list[tuple[int, int, int]] = []
        for k, widths in enumerate(_STAGES):
            layers: list[nn.Module] = []
            for out_ch in widths:
                pad = 3 if first and channels == 1 else 1  # reference: grey 28 -> 32
                first = False
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                h, w = h + 2 * pad - 2, w + 2 * pad - 2
                norm = make_norm(params.norm, out_ch)
                assert norm is not None
                layers += [norm, nn.ReLU()]  # ReLU not in place: block outputs are features
                in_ch = out_ch
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise BuildError(
                    f"VGG11 needs larger images than {image_size[0]}x{image_size[1]}: the "
                    f"feature map reaches {h}x{w} at block {k + 1} (5 max-pools need at "
                    f"least 32x32, or 28x28 for 1-channel input)"
                )
            blocks.append(nn.Sequential(*layers))
            shapes.append((in_ch, h, w))
        self.blocks = nn.ModuleList(blocks)
        self._shapes = shapes
        self.classifier = nn.Linear(in_ch * h * w, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each stage's output shape without the batch dimension (5 blocks)."""
        return list(self._shapes)
