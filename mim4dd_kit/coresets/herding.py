"""``herding``: greedy selection whose running mean tracks the class mean.

Welling, "Herding dynamical weights to learn", ICML 2009; used as a coreset baseline by
iCaRL (Rebuffi et al., CVPR 2017) and by the DC/DSA/DM papers (Zhao et al.). For every
class with mean feature mu, step t (t = 1..ipc) adds the not yet chosen sample f that
minimises ``|| mu - (S_{t-1} + f) / t ||``, S the sum of the chosen features; the first pick
is therefore the sample closest to the class mean.

Vectorised: ``|| mu - (S + f) / t ||^2`` orders the candidates as
``||f||^2 - 2 f . (t mu - S)``, one batched matrix-vector product over all samples of a
block of classes per step; the loop runs over the ``ipc`` steps only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import PerClassSelector, masked_mean
from .params import HerdingParams


class Herding(PerClassSelector):
    """Herding (Welling 2009): greedily match the running mean to the class mean."""

    name = "herding"

    Params = HerdingParams

    def __init__(self, params: Herding.Params | None = None):
        self.params = params or Herding.Params()

    def select_block(self, feats: Tensor, valid: Tensor, ipc: int,
                     generator: torch.Generator | None) -> Tensor:
        if self.params.normalize:
            feats = torch.nn.functional.normalize(feats, dim=-1)
        c = feats.shape[0]
        mu = masked_mean(feats, valid)  # (c, D)
        sq = (feats * feats).sum(-1)  # (c, W)
        chosen_sum = torch.zeros_like(mu)
        taken = ~valid
        rows = torch.arange(c, device=feats.device)
        picks = []
        for t in range(1, ipc + 1):
            target = t * mu - chosen_sum  # (c, D)
            score = sq - 2 * torch.bmm(feats, target[..., None])[..., 0]  # (c, W)
            j = score.masked_fill(taken, float("inf")).argmin(1)  # (c,)
            picks.append(j)
            taken[rows, j] = True
            chosen_sum = chosen_sum + feats[rows, j]
        return torch.stack(picks, 1)
