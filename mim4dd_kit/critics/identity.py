"""Identity critic: scores use the features themselves (MIM4DD Table 2, "w.o network")."""

from __future__ import annotations

from torch import Tensor, nn

from .params import IdentityCriticParams


class IdentityCritic(nn.Module):
    """No critic network: the flattened features are the embedding (MIM4DD Table 2)."""

    Params = IdentityCriticParams

    def __init__(self, params: IdentityCritic.Params, *, in_features: int):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.params = params
        self.out_dim = in_features

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> the same tensor (B, D)."""
        return x
