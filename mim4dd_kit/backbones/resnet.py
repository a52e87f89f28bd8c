"""ResNet-18 of the DC code base (VICO-UoE/DatasetCondensation ``networks.py``).

CIFAR-style ResNet (after kuangliu/pytorch-cifar): a stem Conv 3x3 (64, stride 1,
padding 1, no bias) -> norm -> ReLU, then four stages of two BasicBlocks with widths
64/128/256/512 and strides 1/2/2/2, a global average pool and ``Linear(512, classes)``.
A BasicBlock is Conv3x3(stride) -> norm -> ReLU -> Conv3x3 -> norm, plus a shortcut
(identity, or Conv1x1(stride) -> norm where the shape changes), then ReLU.

Unlike ConvNet/VGG there is no padding 3 on grey input (the reference has none either):
1x28x28 gives stage outputs 28, 14, 7, 4 and 3x32x32 gives 32, 16, 8, 4.

Norm: ``instance`` is ``GroupNorm(C, C, affine=True)`` (reference ``ResNet18``), ``batch``
is ``BatchNorm2d`` (reference ``ResNet18BN``). The blocks are the stem and the 4 stages,
so ``features`` returns 5 tensors (taps: ``pre_activation`` is the stem's norm output and
each stage's last residual sum before its ReLU; no block pools, so ``pre_pool`` is the
output); ``classify`` pools the last one globally (the reference
``avg_pool2d(out, 4)`` is the same on a 4x4 map) and applies the linear layer. ``embed``
stays the flattened last block (512 x 4 x 4 at 32x32), as for every backbone here.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..api import Backbone, Tap
from ..core.errors import BuildError
from ._checks import check_context
from .convnet import make_norm
from .params import ResNet18Params

_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)
_DEPTHS = (2, 2, 2, 2)


def _norm(kind: str, width: int) -> nn.Module:
    norm = make_norm(kind, width)
    assert norm is not None  # ResNet norms are instance or batch
    return norm


def _strided(size: int, stride: int) -> int:
    # 3x3 conv with padding 1 (or 1x1 conv with padding 0) at this stride
    return (size - 1) // stride + 1


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016, CIFAR variant)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(norm, out_ch)
            )

    def pre_activation(self, x: Tensor) -> Tensor:
        """The residual sum before the closing ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        # pre_activation inlined: the default path makes no extra call
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))  # not in place: outputs are features


class ResNet18(Backbone):
    """CIFAR-style ResNet-18, stem + 4 stages of 2 BasicBlocks + GAP + fc (DC ResNet18)."""

    Params = ResNet18Params

    def __init__(
        self,
        params: ResNet18.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__()
        check_context("ResNet18", channels, num_classes, image_size)
        self.params = params
        h, w = image_size
        stem = nn.Sequential(
            nn.Conv2d(channels, _WIDTHS[0], 3, stride=1, padding=1, bias=False),
            _norm(params.norm, _WIDTHS[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = [stem]
        shapes: list[tuple[int, int, int]] = [(_WIDTHS[0], h, w)]
        in_ch = _WIDTHS[0]
        for width, stride, depth in zip(_WIDTHS, _STRIDES, _DEPTHS, strict=True):
            layers = []
            for i in range(depth):
                layers.append(BasicBlock(in_ch, width, stride if i == 0 else 1, params.norm))
                in_ch = width
            h, w = _strided(h, stride), _strided(w, stride)
            blocks.append(nn.Sequential(*layers))
            shapes.append((width, h, w))
        if params.norm == "instance" and h * w < 2:
            # GroupNorm(C, C) cannot normalise a single value per channel
            raise BuildError(
                f"ResNet18 with instance norm needs larger images than "
                f"{image_size[0]}x{image_size[1]}: the last stage's map is {h}x{w}; use at "
                f"least 9x9 images or norm: batch"
            )
        self.blocks = nn.ModuleList(blocks)
        self._shapes = shapes
        self.classifier = nn.Linear(in_ch, num_classes)

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Each block's output shape without the batch dimension (stem + 4 stages)."""
        return list(self._shapes)

    def tap_block(self, k: int, x: Tensor, tap: Tap) -> tuple[Tensor, Tensor]:
        """The stem is [conv, norm, ReLU]; a stage's tap is its last BasicBlock's: the
        residual sum before the closing ReLU for ``pre_activation``. No block pools (the
        global pool is in ``classify``), so ``pre_pool`` is the output."""
        if k == 0:
            return super().tap_block(k, x, tap)
        if tap != "pre_activation":
            out = self.blocks[k](x)
            return out, out
        *head, last = self.blocks[k]
        for basic in head:
            x = basic(x)
        pre = last.pre_activation(x)
        return pre, F.relu(pre)

    def classify(self, last: Tensor) -> Tensor:
        """(B, 512, h, w) -> global average pool -> logits (B, num_classes)."""
        return self.classifier(last.mean(dim=(2, 3)))
