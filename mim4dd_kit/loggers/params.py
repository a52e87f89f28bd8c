"""Parameters models of the built-in experiment trackers, importable without torch or
the trackers' packages.

Reached through the ``mdk.params.loggers`` entry points (pyproject.toml) when a recipe is
validated; each tracker class keeps its model as ``Params``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..api.params import TrackerParams


class TensorBoardParams(TrackerParams):
    dir: str = Field(
        "tensorboard", min_length=1, description="folder of the event files: relative "
        "to the run folder, or absolute"
    )


class MLflowParams(TrackerParams):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (a server, sqlite:///..., file:...); "
        "null: a file store in <run folder>/mlruns"
    )
    experiment: str = Field("mim4dd_kit", min_length=1, description="experiment name")
    run_name: str | None = Field(None, description="MLflow run name; null: the recipe's")


class WandBParams(TrackerParams):
    project: str = Field("mim4dd_kit", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B entity (user or team); null: "
                               "the account's default")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files under the run folder only (sync later); "
        "online: upload as the run runs (needs a login)"
    )
    run_name: str | None = Field(None, description="W&B run name; null: the recipe's")
    dir: str = Field("wandb", min_length=1, description="W&B's folder: relative to the "
                     "run folder, or absolute")
