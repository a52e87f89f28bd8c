"""One fully connected layer critic: MIM4DD Table 2 "1 fc-layer", the paper's best."""

from __future__ import annotations

from torch import Tensor, nn

from .params import LinearCriticParams


class LinearCritic(nn.Module):
    """One fc layer into the contrastive space (MIM4DD Table 2 "1 fc-layer", its best)."""

    Params = LinearCriticParams

    def __init__(self, params: LinearCritic.Params, *, in_features: int):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.params = params
        self.out_dim = params.out_dim
        self.fc = nn.Linear(in_features, params.out_dim, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, out_dim)."""
        return self.fc(x)
