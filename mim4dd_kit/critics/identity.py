"""Identity critic: no network (MIM4DD paper Table 2, "critic function w.o network")."""

from __future__ import annotations

from torch import Tensor, nn

from ..contracts import Params


class IdentityCritic(nn.Module):
    """No critic network: scores use the flattened features themselves."""

    class Params(Params):
        pass

    def __init__(self, params: IdentityCritic.Params, *, in_features: int):
        super().__init__()
        self.out_dim = in_features

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, D)
        return x
