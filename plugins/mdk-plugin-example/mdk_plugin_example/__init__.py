"""Example third-party plugin package for mim4dd_kit: registers a LeNet backbone."""

from .lenet import LeNet

__all__ = ["LeNet"]
