"""Two fully connected layers critic: MIM4DD Table 2 "2 fc-layer".

The paper does not give the hidden width; 256 (twice the default embedding size) is our
choice and a parameter.
"""

from __future__ import annotations

from torch import Tensor, nn

from .params import MLPCriticParams


class MLPCritic(nn.Module):
    """Two fc layers with a ReLU between them (MIM4DD Table 2 "2 fc-layer")."""

    Params = MLPCriticParams

    def __init__(self, params: MLPCritic.Params, *, in_features: int):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.params = params
        self.out_dim = params.out_dim
        self.net = nn.Sequential(
            nn.Linear(in_features, params.hidden),
            nn.ReLU(),
            nn.Linear(params.hidden, params.out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, out_dim)."""
        return self.net(x)
