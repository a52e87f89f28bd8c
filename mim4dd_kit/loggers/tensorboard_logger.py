"""TensorBoard event files under the run folder (extra: ``tensorboard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..api.loggers import (
    TrackedRun,
    evaluation_scalars,
    evaluations_json,
    missing_package,
)
from .params import TensorBoardParams


def _code(text: str) -> str:
    """Text as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoard:
    """TensorBoard: scalars, image grids, the recipe and the evaluations as event files."""

    Params = TensorBoardParams

    def __init__(self, params: TensorBoard.Params):
        self.params = params
        self.images_every = params.images_every
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_package("tensorboard", "tensorboard", "tensorboard") from None
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def start(self, run: TrackedRun) -> None:
        path = Path(self.params.dir)
        path = path if path.is_absolute() else run.run_dir / path
        # on resume, events after the checkpoint (written before a crash) are dropped
        self.writer = self._writer_class(log_dir=str(path),
                                         purge_step=run.start + 1 if run.start else None)
        self.writer.add_text("recipe", _code(yaml.safe_dump(run.recipe, sort_keys=False)),
                             run.start)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, step: int, grid: np.ndarray) -> None:
        self.writer.add_image("synthetic", grid, step, dataformats="HWC")

    def log_evaluations(self, step: int, evaluations: dict[str, Any]) -> None:
        for key, value in evaluation_scalars(evaluations).items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("evaluations", _code(evaluations_json(evaluations)), step)

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
