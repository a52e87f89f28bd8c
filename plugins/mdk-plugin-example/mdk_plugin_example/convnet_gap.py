"""A ConvNet with a global-average-pooling head, built on the toolkit's own ConvNet.

The blocks are exactly the core ``convnet``'s (Conv 3x3 -> norm -> act -> pool, the same
``width``/``depth``/``norm``/``activation``/``pooling`` parameters, imported from
``mim4dd_kit.backbones.convnet``); only the head differs: the last block's map is averaged
over its spatial positions, ``(B, width, h, w) -> (B, width)``, before a
``Linear(width, num_classes)``. The classifier therefore no longer depends on the image
size, and it has ``width * num_classes + num_classes`` parameters instead of
``width * h * w * num_classes + num_classes``.

This module is also the example of a plugin that builds on the toolkit: it subclasses a
core backbone and reuses its ``Params`` model rather than copying either.
"""

from __future__ import annotations

from torch import Tensor, nn

from mim4dd_kit.backbones.convnet import ConvNet


class ConvNetGAP(ConvNet):
    """ConvNet blocks with a global-average-pooling head (example third-party plugin)."""

    class Params(ConvNet.Params):
        """The core ConvNet's parameters, unchanged."""

    def __init__(
        self,
        params: ConvNetGAP.Params,
        *,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
    ):
        super().__init__(params, channels=channels, num_classes=num_classes,
                         image_size=image_size)
        self.classifier = nn.Linear(params.width, num_classes)  # replaces the flatten head

    def classify(self, last: Tensor) -> Tensor:
        """(B, width, h, w) -> mean over (h, w) -> (B, num_classes)."""
        return self.classifier(last.mean(dim=(2, 3)))
