"""Parameters models of the built-in critics, importable without torch.

Reached through the ``mdk.params.critics`` entry points (pyproject.toml) when a recipe is
validated; each critic class keeps its model as ``Params``.
"""

from __future__ import annotations

from pydantic import Field

from ..api.params import Params


class IdentityCriticParams(Params):
    """The identity critic has no parameters."""


class LinearCriticParams(Params):
    out_dim: int = Field(128, gt=0, description="size E of the contrastive embedding")
    bias: bool = Field(True, description="learn an additive bias")


class MLPCriticParams(Params):
    hidden: int = Field(256, gt=0, description="hidden units (not given by the paper)")
    out_dim: int = Field(128, gt=0, description="size E of the contrastive embedding")
