"""Example third-party plugin package for mim4dd_kit: registers the ``convnet_gap`` backbone."""

from .convnet_gap import ConvNetGAP

__all__ = ["ConvNetGAP"]
