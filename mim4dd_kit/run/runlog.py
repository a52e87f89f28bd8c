"""Following a run while it runs: the streaming loss log, plain progress lines and the loss
curves drawn when the loop ends.

A run folder's ``recipe.yaml`` is written before the first iteration and ``losses.jsonl``
gets one JSON object per iteration, appended and flushed as soon as the iteration ends, so
``tail -f`` follows a run and a crash keeps every finished iteration's losses. Each row
holds every key of the iteration's logs plus ``wall_time`` (Unix seconds when the row was
written) and ``s_per_it`` (seconds the iteration took). On ``--resume`` the rows after the
checkpoint are dropped before the run continues, so the file again has one row per
iteration.

Without a progress bar (stderr is not a terminal: nohup, SLURM, CI) the run reports
through the standard :mod:`logging` module, logger ``mim4dd_kit.run``: a line every
``output.log_every`` iterations and at least every ``output.log_seconds`` seconds, with
the iteration, the losses, the speed and the time left. The library configures no
handler; ``mdk`` sends these records to stderr (docs/following-runs.md).

``losses.png`` (the ``plot`` extra) shows the same rows as curves; :class:`LossCurves`
collects them iteration by iteration and draws the picture once, when the loop finishes
without an error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import IO, Any

import yaml

from ..core import plots
from ..core.errors import OutputError
from ..core.files import atomic_write

log = logging.getLogger("mim4dd_kit.run")

LOSSES = "losses.jsonl"
CURVES = "losses.png"
RECIPE = "recipe.yaml"
#: the keys a row adds to the iteration's logs
TIME_KEYS = ("wall_time", "s_per_it")


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_losses(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith("loss"))


def write_recipe(run_dir: Path, recipe_dict: dict[str, Any]) -> None:
    text = yaml.safe_dump(recipe_dict, sort_keys=False)
    atomic_write(run_dir / RECIPE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def left_by_same_recipe(run_dir: Path, recipe: Any) -> bool:
    """Whether the folder's ``recipe.yaml`` is the one a run of ``recipe`` writes (same
    fingerprint): its logs are then what a run of this recipe left when it stopped
    before its first checkpoint, and a new run may replace them."""
    try:
        data = yaml.safe_load((run_dir / RECIPE).read_text(encoding="utf-8"))
        return isinstance(data, dict) and (
            type(recipe).model_validate(data).fingerprint() == recipe.fingerprint())
    except Exception:  # anything else is someone else's file
        return False


def _kept_rows(path: Path, start: int, history: list[dict[str, float]]) -> list[str]:
    """The lines of ``path`` for iterations 1..start, when they are all there and in order
    (they carry the times); else the checkpoint's history, which has no times."""
    lines: list[str] = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if len(lines) == start:
                break
            row = json.loads(line)
            if not isinstance(row, dict) or row.get("iteration") != len(lines) + 1:
                raise ValueError
            lines.append(line)
    except (OSError, ValueError, UnicodeDecodeError):
        lines = []
    if len(lines) == start:
        return lines
    return [json.dumps(h) for h in history[:start]]


class StreamingLog:
    """``losses.jsonl``, one flushed row per iteration (and ``recipe.yaml`` at the start)."""

    def __init__(self, run_dir: Path, recipe_dict: dict[str, Any], start: int,
                 history: list[dict[str, float]]):
        self.path = run_dir / LOSSES
        write_recipe(run_dir, recipe_dict)
        kept = _kept_rows(self.path, start, history) if start else []
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        try:
            self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._last = time.perf_counter()

    def record(self, iteration: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        row = {"iteration": iteration, **logs, "wall_time": round(time.time(), 3),
               "s_per_it": round(now - self._last, 6)}
        self._last = now
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LossCurves:
    """``losses.png``: the base loss, the regularizer and its per-layer terms per iteration
    (the paper's Fig. 4; mim4dd_kit/core/plots.py). ``record`` is the per-iteration
    callback, ``history`` the rows of the iterations before ``start`` (from the checkpoint
    on ``--resume``); ``draw`` writes the picture of every row, and does nothing without
    rows or without matplotlib."""

    def __init__(self, run_dir: Path, title: str, history: list[dict[str, float]]):
        self.path = run_dir / CURVES
        self.title = title
        self.rows: list[dict[str, float]] = list(history)

    def record(self, iteration: int, logs: dict[str, float]) -> None:
        self.rows.append({"iteration": iteration, **logs})

    def draw(self) -> None:
        if self.rows and plots.have_matplotlib():
            plots.save_loss_curves(self.rows, self.path, title=self.title)


class ProgressLines:
    """Plain progress lines through :mod:`logging`: every ``every`` steps (0: a twentieth
    of ``total``) and at least every ``seconds`` seconds, plus one at the end. ``total``
    None counts without a total (lines by time only)."""

    def __init__(self, name: str, start: int, total: int | None, every: int, seconds: float,
                 logger: logging.Logger = log, what: str = "iteration", unit: str = "it"):
        self.name, self.start, self.total, self.what, self.unit = name, start, total, what, unit
        self.every = every or (max(1, total // 20) if total else 0)
        self.seconds = seconds
        self.logger = logger
        self.t0 = self._shown_at = time.perf_counter()
        self._shown = start

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        total = self.total
        due = ((self.every and done - self._shown >= self.every)
               or now - self._shown_at >= self.seconds or (total is not None and done >= total))
        if not due or done == self._shown:
            return
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        unit = self.unit
        speed = (f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}" if rate
                 else "-")
        if total is None:
            self.logger.info("%s: %s %d%s | %s", self.name, self.what, done,
                             f" {extra}" if extra else "", speed)
        else:
            eta = (total - done) / rate if rate > 0 else math.inf
            pct = 100.0 * done / total if total else 100.0
            self.logger.info("%s: %s %d/%d (%.0f%%)%s | %s | ETA %s", self.name, self.what,
                             done, total, pct, f" {extra}" if extra else "", speed,
                             format_seconds(eta))
        self._shown, self._shown_at = done, now
