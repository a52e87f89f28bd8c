"""Two fully connected layers critic (MIM4DD paper Table 2, "2 fc-layer")."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from ..contracts import Params


class MLPCritic(nn.Module):
    """Two fc layers with a ReLU between them (paper Table 2's 2-layer critic)."""

    class Params(Params):
        hidden: int = Field(256, gt=0, description="hidden width (not given by the paper)")
        out_dim: int = Field(128, gt=0, description="size of the contrastive space")

    def __init__(self, params: MLPCritic.Params, *, in_features: int):
        super().__init__()
        self.out_dim = params.out_dim
        self.net = nn.Sequential(
            nn.Linear(in_features, params.hidden), nn.ReLU(inplace=True),
            nn.Linear(params.hidden, params.out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, E)
        return self.net(x)
