"""Parameters models and references to other components inside them."""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

#: where a backbone block's features may be taken (``Backbone.features``'s ``tap``)
Tap = Literal["output", "pre_pool", "pre_activation"]
TAPS: tuple[str, ...] = ("output", "pre_pool", "pre_activation")


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes only ints/floats (or None): then true/false is a mistake."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numbers_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_numbers_only(a) for a in args)
    return annotation in (int, float)


class NumbersModel(BaseModel):
    """Numbers are finite (no ``.inf``/``.nan``), and a number field refuses ``true``
    (Pydantic would read it as 1)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields and _numbers_only(
                cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


class Params(NumbersModel):
    """Base of every component's parameters model: unknown keys are errors; numbers are
    finite and never booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrackerParams(Params):
    """Parameters every built-in tracker (``mdk.loggers``) has; re-exported by
    :mod:`mim4dd_kit.api.loggers`."""

    images_every: int = Field(
        100, ge=0, description="iterations between image grids of the synthetic set; 0: "
        "only the grid after the last iteration"
    )


class ComponentRef(BaseModel):
    """A reference to another component inside a parameters model, e.g. a critic.

    Written inline in YAML as ``{name: linear, out_dim: 128}``: every key but ``name``
    is a parameter of the referenced component. Subclasses fix the plugin ``kind`` so the
    registry can validate the nested parameters too (errors then name the full key path,
    e.g. ``regularizer.critic.out_dim``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: ClassVar[str] = ""
    name: str = Field(min_length=1, description="registered plugin name, or package:name")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `backbone: convnet` is short for `backbone: {name: convnet}`
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CriticRef(ComponentRef):
    kind: ClassVar[str] = "critics"


class BackboneRef(ComponentRef):
    kind: ClassVar[str] = "backbones"


class AugmentationRef(ComponentRef):
    kind: ClassVar[str] = "augmentations"


class DatasetRef(ComponentRef):
    kind: ClassVar[str] = "datasets"


class LossRef(ComponentRef):
    kind: ClassVar[str] = "dd_losses"


class RegularizerRef(ComponentRef):
    kind: ClassVar[str] = "regularizers"


class EvaluatorRef(ComponentRef):
    kind: ClassVar[str] = "evaluators"


class LoggerRef(ComponentRef):
    """An experiment tracker (mim4dd_kit/run/tracking.py)."""

    kind: ClassVar[str] = "loggers"
