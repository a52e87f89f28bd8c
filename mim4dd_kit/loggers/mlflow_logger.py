"""MLflow tracking (extra: ``mlflow``): a local file store under the run folder unless a
tracking URI is given."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..api.loggers import TrackedRun, evaluation_scalars, flatten, missing_package
from .params import MLflowParams

#: MLflow's limits: values of a parameter, entries of one batch call
MAX_PARAM_CHARS = 6000
BATCH = 100
STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflow:
    """MLflow: the recipe as parameters, losses as metrics, image grids and evaluations."""

    Params = MLflowParams

    def __init__(self, params: MLflow.Params):
        self.params = params
        self.images_every = params.images_every
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param
        except ImportError:
            raise missing_package("mlflow", "mlflow", "mlflow") from None
        self._client_class, self._metric, self._param = MlflowClient, Metric, Param
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: TrackedRun) -> None:
        uri = self.params.tracking_uri or (run.run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses file stores unless this opt-in is set; the default store is
            # one (a local folder that needs no server or database)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = self._client_class(tracking_uri=uri)
        name = self.params.experiment
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"mdk.run_dir": str(run.run_dir)}
        if run.start:
            tags["mdk.resumed_at_iteration"] = str(run.start)
        created = self.client.create_run(experiment, run_name=self.params.run_name or run.name,
                                         tags=tags)
        self.run_id = created.info.run_id
        params = [self._param(k[:250], str(v)[:MAX_PARAM_CHARS])
                  for k, v in flatten(run.recipe).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def log_image(self, step: int, grid: np.ndarray) -> None:
        picture = grid[:, :, 0] if grid.shape[2] == 1 else grid
        self.client.log_image(self.run_id, picture,
                              artifact_file=f"synthetic/iteration_{step:06d}.png")

    def log_evaluations(self, step: int, evaluations: dict[str, Any]) -> None:
        self.log_scalars(step, evaluation_scalars(evaluations))
        self.client.log_dict(self.run_id, evaluations, "evaluations.json")

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
            self.run_id = None
