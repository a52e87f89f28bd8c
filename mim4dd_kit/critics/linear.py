"""One fully connected layer critic (MIM4DD paper Table 2, its best: 65.9 on CIFAR-10)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from ..contracts import Params


class LinearCritic(nn.Module):
    """One fc layer mapping flattened features to the contrastive space (paper's best)."""

    class Params(Params):
        out_dim: int = Field(128, gt=0, description="size of the contrastive space")
        bias: bool = True

    def __init__(self, params: LinearCritic.Params, *, in_features: int):
        super().__init__()
        self.out_dim = params.out_dim
        self.fc = nn.Linear(in_features, params.out_dim, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, E)
        return self.fc(x)
