"""Checks shared by the built-in backbones."""

from __future__ import annotations

from ..core.errors import BuildError


def check_context(name: str, channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
    """Reject a build context no network can use, naming the backbone."""
    if channels < 1 or num_classes < 1 or min(image_size) < 1:
        raise BuildError(
            f"{name} needs positive channels, classes and image size; got "
            f"channels={channels}, num_classes={num_classes}, image_size={image_size}"
        )
