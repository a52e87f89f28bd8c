"""The identity augmentation (``none``): for runs and evaluations without augmentation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..api import DataInfo
from .params import NoAugmentParams


class NoAugment:
    """No augmentation: returns its inputs unchanged."""

    Params = NoAugmentParams

    def __init__(self, params: NoAugment.Params, *, data_info: DataInfo):
        self.params = params

    def siamese(
        self,
        real: Tensor,
        real_groups: Tensor,
        syn: Tensor,
        syn_groups: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return ``(real, syn)`` as given (the same tensors, so gradients pass through)."""
        return real, syn

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return ``x`` (N, C, H, W) as given."""
        return x
