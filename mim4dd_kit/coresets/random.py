"""``random``: a uniformly drawn real subset, the field's simplest baseline.

Every class gets ``ipc`` distinct training images drawn uniformly without replacement, in
one vectorised step per block of classes (random keys, ``ipc`` smallest per class; the
same scheme as ``RealData.sample_per_class``). Reproducible from the seed. The DC paper
(Zhao et al., ICLR 2021, Table 1) reports it as "Random".
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import PerClassSelector, random_keys
from .params import RandomSubsetParams


class RandomSubset(PerClassSelector):
    """Random real images per class (uniform without replacement)."""

    name = "random"
    needs_features = False

    Params = RandomSubsetParams

    def __init__(self, params: RandomSubset.Params | None = None):
        self.params = params or RandomSubset.Params()

    def select_block(self, feats: Tensor, valid: Tensor, ipc: int,
                     generator: torch.Generator | None) -> Tensor:
        keys = random_keys(valid, generator)  # (c, W)
        return keys.topk(ipc, dim=1, largest=False).indices
