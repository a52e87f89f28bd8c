"""Parameters models of the built-in augmentations, importable without torch.

Reached through the ``mdk.params.augmentations`` entry points (pyproject.toml) when a
recipe is validated; each augmentation class keeps its model as ``Params``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..api.params import Params

#: op families of the reference and, for ``color``, its ops in the order applied
KNOWN_FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
AUTO_STRATEGY = "color_crop_cutout_flip_scale_rotate"
AUTO_STRATEGY_NO_FLIP = "color_crop_cutout_scale_rotate"


class DSAParams(Params):
    strategy: str = Field(
        "auto",
        description="op families joined by '_', one drawn uniformly per draw; 'auto' "
        f"is '{AUTO_STRATEGY}', without flip where the data set is not flip-safe",
    )
    brightness: float = Field(1.0, ge=0, description="x + (u - 0.5) * brightness")
    saturation: float = Field(2.0, ge=0, description="channel spread times u * saturation")
    contrast: float = Field(0.5, ge=0, description="spread around the mean times u + contrast")
    ratio_crop_pad: float = Field(
        0.125, ge=0, le=1, description="max integer shift as a fraction of the side"
    )
    ratio_cutout: float = Field(0.5, gt=0, le=1, description="cutout side / image side")
    prob_flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    ratio_scale: float = Field(
        1.2, gt=1, description="sx, sy ~ U[1/ratio_scale, ratio_scale] independently"
    )
    ratio_rotate: float = Field(
        15.0, ge=0, le=180, description="rotation angle ~ U[-r, r] degrees"
    )

    @field_validator("strategy")
    @classmethod
    def _known_families(cls, value: str) -> str:
        if value == "auto":
            return value
        for name in value.split("_"):
            if name not in KNOWN_FAMILIES:
                raise ValueError(
                    f"unknown augmentation family {name!r} in strategy {value!r}; "
                    f"known families: {', '.join(KNOWN_FAMILIES)} (joined by '_'), "
                    "or 'auto'"
                )
        return value


class NoAugmentParams(Params):
    pass
