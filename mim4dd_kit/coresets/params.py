"""Parameters models of the built-in coreset methods, importable without torch.

Reached through the ``mdk.params.coresets`` entry points (pyproject.toml); each method
class keeps its model as ``Params``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..api.params import Params


class RandomSubsetParams(Params):
    pass


class HerdingParams(Params):
    normalize: bool = Field(
        False, description="L2-normalise every feature first (as iCaRL does)"
    )


class KCenterParams(Params):
    first: Literal["mean", "random"] = Field(
        "mean", description="first centre: the sample closest to the class mean, or a "
        "random sample (seeded)"
    )
