"""``k_center``: greedy k-center selection per class (Sener & Savarese, ICLR 2018).

After a first centre, each step adds the sample farthest from its nearest chosen centre,
the classic greedy 2-approximation of the minimax-radius (k-center) problem (Gonzalez
1985): the largest distance of any sample to its nearest centre is at most twice the
optimum. The DC/DSA/DM papers report it as the "K-Center" baseline.

The first centre is a choice the sources leave open (Sener & Savarese start from the
already labelled pool, which a class of a coreset baseline does not have). The default is
deterministic: the sample closest to the class mean; ``first: random`` draws it from the
seed instead.

Vectorised over the samples of a block of classes: the distances to a new centre are one
batched matrix-vector product per step, on mean-centred features (less cancellation in
``||a||^2 + ||b||^2 - 2 a . b``); the loop runs over the ``ipc`` steps only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import PerClassSelector, masked_mean, random_keys
from .params import KCenterParams


class KCenter(PerClassSelector):
    """Greedy k-center (Sener & Savarese 2018): cover each class's feature space."""

    name = "k_center"

    Params = KCenterParams

    def __init__(self, params: KCenter.Params | None = None):
        self.params = params or KCenter.Params()

    def select_block(self, feats: Tensor, valid: Tensor, ipc: int,
                     generator: torch.Generator | None) -> Tensor:
        c = feats.shape[0]
        centred = feats - masked_mean(feats, valid)[:, None, :]  # (c, W, D)
        sq = (centred * centred).sum(-1)  # (c, W): squared distance to the class mean
        rows = torch.arange(c, device=feats.device)
        if self.params.first == "mean":
            j = sq.masked_fill(~valid, float("inf")).argmin(1)
        else:
            j = random_keys(valid, generator).argmin(1)
        nearest = torch.full_like(sq, float("inf"))  # squared distance to nearest centre
        taken = ~valid
        picks = []
        for step in range(ipc):
            if step:
                j = nearest.masked_fill(taken, -1.0).argmax(1)
            picks.append(j)
            taken[rows, j] = True
            centre = centred[rows, j]  # (c, D)
            dist = sq + (centre * centre).sum(-1)[:, None] \
                - 2 * torch.bmm(centred, centre[..., None])[..., 0]
            nearest = torch.minimum(nearest, dist.clamp_min(0))
        return torch.stack(picks, 1)
