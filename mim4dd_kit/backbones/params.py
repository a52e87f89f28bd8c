"""Parameters models of the built-in backbones, importable without torch.

``mdk validate`` reaches them through the ``mdk.params.backbones`` entry points
(pyproject.toml) without importing the networks; each network class keeps its model as
``Params`` (``ConvNet.Params is ConvNetParams``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..api.params import Params

NormKind = Literal["instance", "batch", "layer", "group", "none"]
ActKind = Literal["relu", "leakyrelu", "sigmoid"]
PoolKind = Literal["avg", "max", "none"]


class ConvNetParams(Params):
    width: int = Field(128, gt=0, description="output channels of every conv (paper: 128)")
    depth: int = Field(3, gt=0, description="number of conv blocks K (paper: 3)")
    norm: NormKind = Field(
        "instance",
        description="instance (paper), batch, layer (GroupNorm 1 group), group "
        "(GroupNorm 4 groups) or none",
    )
    activation: ActKind = Field(
        "relu", description="relu (paper), leakyrelu (slope 0.01) or sigmoid"
    )
    pooling: PoolKind = Field(
        "avg", description="2x2 stride-2 pooling closing each block: avg (paper), max, none"
    )

    @model_validator(mode="after")
    def _groups_divide_width(self) -> ConvNetParams:
        # caught at recipe validation rather than when the network is first built
        if self.norm == "group" and self.width % 4:
            raise ValueError(f"norm 'group' uses 4 groups; width {self.width} is not a "
                             f"multiple of 4")
        return self


class ConvNetD4Params(ConvNetParams):
    depth: int = Field(
        4, gt=0, description="number of conv blocks K (ConvNetD4: 4, for 64x64 images)"
    )


class MLPParams(Params):
    width: int = Field(128, gt=0, description="units of every hidden layer (reference: 128)")
    depth: int = Field(2, gt=0, description="hidden layers, i.e. blocks K (reference: 2)")


class AlexNetParams(Params):
    norm: Literal["none", "instance", "batch"] = Field(
        "none",
        description="after every conv: none (reference AlexNet), batch (AlexNetBN) or "
        "instance (GroupNorm(C, C, affine=True))",
    )


class VGG11Params(Params):
    norm: Literal["instance", "batch"] = Field(
        "instance",
        description="after every conv: instance (GroupNorm(C, C, affine=True), "
        "reference VGG11) or batch (BatchNorm2d, reference VGG11BN)",
    )


class ResNet18Params(Params):
    norm: Literal["instance", "batch"] = Field(
        "instance",
        description="after every conv: instance (GroupNorm(C, C, affine=True), "
        "reference ResNet18) or batch (BatchNorm2d, reference ResNet18BN)",
    )


class LeNetParams(Params):
    activation: Literal["relu", "sigmoid", "tanh"] = Field(
        "relu", description="activation after every conv and hidden fc (reference: relu)"
    )
