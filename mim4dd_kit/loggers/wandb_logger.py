"""Weights & Biases (extra: ``wandb``), offline by default so that it needs no network or
account; ``wandb sync <run folder>/wandb/offline-run-*`` uploads a run later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..api.loggers import TrackedRun, evaluation_scalars, missing_package
from .params import WandBParams


class WandB:
    """Weights & Biases: the recipe as config, losses, image grids and evaluations."""

    Params = WandBParams

    def __init__(self, params: WandB.Params):
        self.params = params
        self.images_every = params.images_every
        try:
            import wandb
        except ImportError:
            raise missing_package("wandb", "wandb", "wandb") from None
        self._wandb = wandb
        self.run: Any = None

    def start(self, run: TrackedRun) -> None:
        p = self.params
        path = Path(p.dir)
        path = path if path.is_absolute() else run.run_dir / path
        path.mkdir(parents=True, exist_ok=True)
        self.run = self._wandb.init(
            project=p.project, entity=p.entity, name=p.run_name or run.name, mode=p.mode,
            dir=str(path), config=run.recipe,
            notes=f"resumed at iteration {run.start}" if run.start else None,
        )

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_image(self, step: int, grid: np.ndarray) -> None:
        pixels = (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        self.run.log({"synthetic": self._wandb.Image(pixels)}, step=step)

    def log_evaluations(self, step: int, evaluations: dict[str, Any]) -> None:
        self.run.summary.update(evaluation_scalars(evaluations))

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None
