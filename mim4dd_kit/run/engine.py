"""The run loop: a validated recipe becomes a distilled, evaluated, stamped set.

``run()`` seeds everything, loads the data once onto the device, builds the components
through the registry, optimises the synthetic images (plus critic heads and a learnable
lr where present) with the recipe's schedule, checkpoints atomically every N iterations,
and finally writes the set with its provenance and evaluation results.

In a multi-process run (torchrun, or ``mdk run --nproc-per-node N``; docs/distributed.md)
every rank runs this same loop on the same seed with its shard of the real batch; the
gradients of the learned tensors and the logged losses are summed over ranks, and rank 0
alone writes checkpoints, logs and the set.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..api import RunContext, Shard, SyntheticState, tapped_features, trait
from ..config import performance
from ..config.recipe import Recipe, load_recipe
from ..config.registry import Registry, default_registry
from ..core import distributed as ddp
from ..core import plots, provenance
from ..core.errors import CheckpointError, DataError, PluginError, RecipeError, RunError
from ..core.files import atomic_write
from ..core.runtime import (
    isolated_rng,
    memory_bytes,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ..io import formation
from ..io.synthetic import save_synthetic, update_metadata
from . import best_of, runlog, tracking
from .context import build_context
from .evaluate import run_evaluators
from .regularizer_steps import RegularizerSteps, RunGuard
from .runlock import LOCK_NAME, RunLock, remove_stale_temporaries
from .statefile import load_state, read_header, save_state

CHECKPOINT = "checkpoint.safetensors"
#: where earlier versions kept a pickled checkpoint: never read (a pickle can run code)
LEGACY_CHECKPOINT = "checkpoint.pt"
#: what a run writes next to its set
LOG_NAMES = ("losses.jsonl", "losses.png", "recipe.yaml", best_of.ROWS)
#: names output.file may not take
RESERVED_NAMES = frozenset({CHECKPOINT, LEGACY_CHECKPOINT, LOCK_NAME, *LOG_NAMES})
Callback = Callable[[int, dict[str, float]], None]


#: the recipe keys whose resolved settings a checkpoint records (they shape the images)
SHAPING_COMPONENTS = ("backbone", "dd_loss", "regularizer", "augmentation")


def _flat_settings(record: dict[str, Any]) -> dict[str, Any]:
    """``{"regularizer.rho": 1.0, "regularizer.name": "mim4dd", ...}`` of a settings record."""
    flat = {f"{key}.name": comp["name"] for key, comp in record.items()}
    flat.update({f"{key}.{name}": value for key, comp in record.items()
                 for name, value in comp["params"].items()})
    return flat


def _settings_record(path: Path, text: str | None) -> dict[str, Any] | None:
    """A checkpoint header's record of resolved settings, flattened; None if it has none."""
    if text is None:
        return None
    try:
        record = json.loads(text)
        if not (isinstance(record, dict) and all(
                isinstance(c, dict) and isinstance(c.get("params"), dict)
                for c in record.values())):
            raise ValueError
        return _flat_settings(record)
    except (ValueError, KeyError):
        raise CheckpointError(
            f"checkpoint {path}: its 'resolved' header entry is not the toolkit's JSON "
            "record of component settings; pass --overwrite to start over"
        ) from None


@dataclass
class RunResult:
    run_dir: Path
    synthetic_path: Path
    iterations: int
    final_losses: dict[str, float]
    evaluations: dict[str, Any]
    #: scores at the evaluation checkpoints (``output.evaluate_every``), in order
    evaluation_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: per evaluator, the max over the checkpoints (MTT's reporting; not the headline)
    best_of: dict[str, dict[str, Any]] = field(default_factory=dict)


def _feature_shapes(make_backbone, info, device, tap: str = "output") -> list[tuple[int, ...]]:
    # a one-image probe gives each block's feature shape (without the batch) for any backbone
    probe = make_backbone().to(device).eval()
    with torch.no_grad():
        x = torch.zeros(1, info.channels, *info.image_size, device=device)
        return [tuple(f.shape[1:]) for f in tapped_features(probe, x, tap)]


def check_set_size(n: int, info, device: torch.device) -> None:
    """Refuse, before allocating, a synthetic set that cannot fit in memory: the images
    with their gradient, momentum and a working copy (4 float32 copies)."""
    need = 4 * 4 * n * info.channels * math.prod(info.image_size)
    limit = memory_bytes(device)
    if limit is not None and need > limit:
        raise RecipeError(
            f"synthetic.ipc asks for {n:,} images of {info.channels}x{info.image_size[0]}x"
            f"{info.image_size[1]}: about {need / 2**30:,.1f} GiB with their gradient and "
            f"momentum, more than the {limit / 2**30:,.1f} GiB of memory of {device}; lower "
            "synthetic.ipc"
        )


class Run(RegularizerSteps):
    """One distillation run; ``run()`` is the functional entry point."""

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device, registry: Registry):
        self.recipe, self.run_dir, self.device, self.registry = recipe, run_dir, device, registry
        self.history: list[dict[str, float]] = []
        #: scores at the evaluation checkpoints (run/best_of.py); kept in the checkpoint
        self.checkpoint_scores: list[dict[str, Any]] = []
        #: whether the loop scores evaluation checkpoints (set by the run: evaluation on
        #: and ``output.evaluate_every`` set)
        self.score_checkpoints = False
        self.started = provenance.now()
        self.shard: Shard = current_shard()
        self.trackers = tracking.Trackers()  # the recipe's loggers, on rank 0 (_run_locked)

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        r, reg = self.recipe, self.registry
        if self.shard.active:
            self.check_shardable()
        self.build_context()
        info = self.data.info
        make_backbone = self.ctx.make_backbone
        # where the regularizer's features are taken (the losses hand them over at this
        # tap), and whether the synthetic side's keep the graph of the network's training
        tap = "output"
        if r.regularizer is not None:
            reg_cls = reg.load("regularizers", r.regularizer.name)
            reg_params = reg.validate("regularizers", r.regularizer)
            tap = trait(reg_cls, "regularizers", "feature_tap")(reg_params)
            self.ctx.feature_network_gradient = trait(
                reg_cls, "regularizers", "network_gradient")(reg_params)
        self.ctx.feature_tap = tap
        self.loss = reg.build("dd_losses", r.dd_loss, ctx=self.ctx)
        # parts whose randomness must not move the main stream (so lambda = 0 or no
        # regularizer leave the base method's trajectory bit-identical)
        with isolated_rng(r.seed + 1, self.device):
            self.reg = None
            # a probe network: a backbone that cannot be built for these images fails here,
            # before the run writes anything
            shapes = _feature_shapes(make_backbone, info, self.device, tap)
            if r.regularizer is not None:
                extra = ({"feature_shapes": shapes} if trait(
                    reg.load("regularizers", r.regularizer.name), "regularizers",
                    "takes_feature_shapes") else {})
                self.reg = reg.build("regularizers", r.regularizer,
                                     num_classes=info.num_classes,
                                     feature_dims=[math.prod(sh) for sh in shapes],
                                     registry=reg, **extra).to(self.device)
        self.guard = RunGuard(self.reg)
        # the reduction the regularizer reads the real side's block outputs through (None:
        # whole features; always None at another tap, where the loss makes a tapped pass)
        view = getattr(self.reg, "real_view", None) if tap == "output" else None
        self.ctx.real_view = view() if view is not None else None
        if self.reg is not None and self.shard.active:
            self.reg.shard = self.shard  # the real features it gets are this rank's rows
        self._init_synthetic()

    def check_shardable(self) -> None:
        """Refuse, before anything is built, a loss or regularizer that cannot take a
        shard of the real batch (class attribute ``shardable``)."""
        r, reg = self.recipe, self.registry
        size = self.shard.world_size
        if not trait(reg.load("dd_losses", r.dd_loss.name), "dd_losses", "shardable"):
            able = []
            for name in reg.names("dd_losses"):
                try:
                    if trait(reg.load("dd_losses", name), "dd_losses", "shardable"):
                        able.append(name)
                except PluginError:
                    continue
            raise RecipeError(
                f"dd_loss {r.dd_loss.name!r} cannot split its real batch over {size} "
                f"processes; run it in a single process, or use a dd loss that can: "
                f"{', '.join(able) or 'none installed'} (see docs/distributed.md)"
            )
        if r.regularizer is not None and not trait(
                reg.load("regularizers", r.regularizer.name), "regularizers", "shardable"):
            raise RecipeError(
                f"regularizer {r.regularizer.name!r} cannot take real features split over "
                f"{size} processes; run it in a single process (see docs/distributed.md)"
            )

    def build_context(self) -> RunContext:
        """Seed, then build what every DD loss may use (mim4dd_kit/run/context.py) and set
        the process-wide backend switches the recipe asks for."""
        seed_everything(self.recipe.seed)
        self.ctx = build_context(self.recipe, self.device, self.registry, shard=self.shard)
        self.data = self.ctx.data
        performance.configure_backends(self.recipe.performance, self.device)
        return self.ctx

    def _init_synthetic(self) -> None:
        s, info = self.recipe.synthetic, self.data.info
        check_set_size(info.num_classes * s.ipc, info, self.device)
        counts = self.data.class_counts()
        if s.init == "real":
            if int(counts.min()) < s.ipc:
                raise DataError(
                    f"synthetic.ipc is {s.ipc} but class {int(counts.argmin())} of "
                    f"{info.name!r} has only {int(counts.min())} training images"
                )
            images, labels = self.data.sample_per_class(s.ipc)
        else:
            labels = torch.arange(info.num_classes, device=self.device).repeat_interleave(s.ipc)
            images = torch.randn(len(labels), info.channels, *info.image_size,
                                 device=self.device)
        self.syn = SyntheticState(images.detach().clone().requires_grad_(True), labels)
        self.opt_img = torch.optim.SGD([self.syn.images], lr=s.lr, momentum=s.momentum)
        # milestones count iterations; the scheduler steps once per image step
        steps = self.image_steps
        self.sched = torch.optim.lr_scheduler.MultiStepLR(
            self.opt_img, milestones=[m * steps for m in s.schedule.milestones],
            gamma=s.schedule.gamma)
        self.opt_lr = None
        if s.learn_lr or self.loss.learns_lr:
            init = s.lr_init if s.lr_init is not None else self.loss.initial_lr
            self.syn.lr = torch.tensor(init, device=self.device, requires_grad=True)
            self.opt_lr = torch.optim.SGD([self.syn.lr], lr=s.lr_lr, momentum=0.5)
        params = list(self.reg.parameters()) if self.reg is not None else []
        self.opt_reg = torch.optim.Adam(params, lr=self.reg.lr) if params else None
        with torch.no_grad():  # DDLoss hook (docs/plugins.md)
            self.loss.init_images(self.syn)

    # -- DDLoss hooks (docs/plugins.md) ---------------------------------------------------
    @property
    def image_steps(self) -> int:
        """Image-optimiser steps per iteration (DDLoss ``image_steps``, default 1)."""
        return int(self.loss.image_steps)

    def loss_view(self) -> SyntheticState:
        """The synthetic set as the DD loss sees it: decoded by ``synthetic.formation``
        (differentiably; mim4dd_kit/io/formation.py), else the stored set itself."""
        factor = self.recipe.synthetic.formation
        if factor == 1:
            return self.syn
        info = self.data.info
        pad = formation.pad_value(info.mean, info.std).to(self.device)
        images, labels = formation.decode(self.syn.images, self.syn.labels, factor, pad=pad)
        return SyntheticState(images, labels, self.syn.lr)

    def iterate(self, iteration: int) -> dict[str, float]:
        """One iteration: ``image_steps`` calls of :meth:`step`, each followed by the
        loss's ``after_step`` hook if it has one; each log is its mean over the steps that
        reported it."""
        n = self.image_steps
        total: dict[str, float] = {}
        count: dict[str, int] = {}
        for _ in range(n):
            logs = self.step(iteration)
            with torch.no_grad():
                self.loss.after_step(self.syn)
            if n == 1:
                return logs
            for k, v in logs.items():  # a key may come from some of the steps only
                total[k] = total.get(k, 0.0) + v
                count[k] = count.get(k, 0) + 1
        return {k: v / count[k] for k, v in total.items()}

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save_checkpoint(self, iteration: int) -> None:
        if ddp.is_main():  # the other ranks hold the same state
            self._write_checkpoint(iteration)
        ddp.barrier()

    def _write_checkpoint(self, iteration: int) -> None:
        state = {
            "iteration": iteration,
            "started": self.started,
            "images": self.syn.images.detach(),
            "lr": None if self.syn.lr is None else self.syn.lr.detach(),
            "opt_img": self.opt_img.state_dict(),
            "sched": self.sched.state_dict(),
            "opt_lr": None if self.opt_lr is None else self.opt_lr.state_dict(),
            "reg": None if self.reg is None else self.reg.state_dict(),
            "opt_reg": None if self.opt_reg is None else self.opt_reg.state_dict(),
            "loss": self.loss.state_dict(),
            "rng": rng_state(),
            # the run device's stream: in a multi-GPU run each rank's device has its own
            # copy of it, which "rng" (indexed by device number) would not restore
            "rng_device": (torch.cuda.get_rng_state(self.device)
                           if self.device.type == "cuda" else None),
            "history": self.history,
            "checkpoint_scores": self.checkpoint_scores,
        }
        header = {"fingerprint": self.recipe.fingerprint(),
                  "resolved": json.dumps(self._resolved(), sort_keys=True)}
        atomic_write(self.checkpoint_path, lambda tmp: save_state(tmp, state, header))

    def _resolved(self) -> dict[str, Any]:
        """Every parameter of the components that shape the images, defaults and presets
        expanded: what the recipe as written (the fingerprint) means with this version."""
        return {key: {"name": ref.name, "params": json.loads(
                    self.registry.validate(ref.kind, ref).model_dump_json(by_alias=True))}
                for key, ref in self.recipe.components() if key in SHAPING_COMPONENTS}

    def load_checkpoint(self) -> int:
        path = self.checkpoint_path
        header = read_header(path)
        # the recipe check reads the header alone: no tensor is used before it passes
        if header.get("fingerprint") != self.recipe.fingerprint():
            raise CheckpointError(
                f"checkpoint {path} was made by a different recipe; resume "
                "with the recipe (and --set overrides) that started the run, or pass "
                "--overwrite to start over"
            )
        made = _settings_record(path, header.get("resolved"))  # None in older checkpoints
        if made is not None:
            now = _flat_settings(json.loads(json.dumps(self._resolved(), sort_keys=True)))
            changed = sorted(k for k in made.keys() | now.keys() if made.get(k) != now.get(k))
            if changed:
                raise CheckpointError(
                    f"checkpoint {path} was made with other component settings than this "
                    f"recipe gives now ({', '.join(changed[:8])}): the toolkit's defaults "
                    "changed since (a preset, say). Resume it with the version that "
                    "started it, or pass --overwrite to start over"
                )
        # the RNG states stay on the CPU; the rest goes where the run's tensors are
        state = load_state(path, lambda key: "cpu" if key.startswith("rng") else self.device)
        try:
            return self._restore(state)
        except CheckpointError:
            raise
        except Exception as exc:  # a hand-made or damaged state: name it, run nothing
            text = str(exc)
            text = text if len(text) <= 300 else text[:300] + "…"
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({type(exc).__name__}: {text}); "
                "pass --overwrite to start over"
            ) from None

    def _restore(self, state: dict[str, Any]) -> int:
        path = self.checkpoint_path
        for key, want in (("images", self.syn.images), ("lr", self.syn.lr)):
            got = state.get(key)
            if want is None or (key == "lr" and got is None):
                continue
            if (not isinstance(got, torch.Tensor) or got.shape != want.shape
                    or got.dtype != want.dtype):
                shown = (f"{tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor)
                         else type(got).__name__)
                raise CheckpointError(
                    f"checkpoint {path}: {key!r} must be a {want.dtype} tensor of shape "
                    f"{tuple(want.shape)}, got {shown}; pass --overwrite to start over"
                )
        with torch.no_grad():
            self.syn.images.copy_(state["images"])
            if self.syn.lr is not None and state["lr"] is not None:
                self.syn.lr.copy_(state["lr"])
        self.opt_img.load_state_dict(state["opt_img"])
        self.sched.load_state_dict(state["sched"])
        if self.opt_lr is not None:
            self.opt_lr.load_state_dict(state["opt_lr"])
        if self.reg is not None:
            self.reg.load_state_dict(state["reg"])
            if self.opt_reg is not None:
                self.opt_reg.load_state_dict(state["opt_reg"])
        self.loss.load_state_dict(state["loss"])
        set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("rng_device") is not None:
            torch.cuda.set_rng_state(state["rng_device"].cpu(), self.device)
        self.history = list(state["history"])
        scores = state.get("checkpoint_scores") or []  # none in older checkpoints
        if not isinstance(scores, list) or not all(
                isinstance(row, dict) and isinstance(row.get("iteration"), int)
                and isinstance(row.get("evaluations"), dict) for row in scores):
            raise CheckpointError(f"checkpoint {path}: 'checkpoint_scores' must be a list of "
                                  "{iteration, evaluations} rows; pass --overwrite to start over")
        self.checkpoint_scores = list(scores)
        self.started = str(state["started"])
        return int(state["iteration"])

    # -- the loop -------------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, float]:
        want = self.reg is not None
        with performance.autocast(self.recipe.performance, self.device):
            out = self.loss.compute(self.loss_view(), iteration, want)
        dd = out.loss.float()
        total = dd
        logs = {"loss_dd": float(out.loss.detach()), **out.logs}
        # logs that are partial sums in a sharded run (the loss's own logs are replicated)
        partial = ["loss_dd"]
        r = None
        diagnose = self.guard.diagnose(iteration)
        if self.reg is not None:
            if out.syn_feats is None or out.real_feats is None:
                raise PluginError(
                    f"dd loss {self.recipe.dd_loss.name!r} returned no features although "
                    f"regularizer {self.recipe.regularizer.name!r} needs them"
                )
            self.reg.iteration = iteration
            self._critic_only_steps(out, iteration)
            with performance.autocast(self.recipe.performance, self.device):
                r = self.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
            r = r.float()
            total = total + r
            logs["loss_reg"] = float(r.detach())
            reg_logs = dict(self.reg.last_logs)
            if diagnose:
                reg_logs.update(self.reg.diagnostics())
            logs.update(reg_logs)
            partial += ["loss_reg", *reg_logs]
        logs["loss"] = float(total.detach())
        partial.append("loss")
        opts = [o for o in (self.opt_img, self.opt_lr, self.opt_reg) if o is not None]
        if self.shard.active:
            # each rank holds a partial loss: sum gradients and logged losses over ranks
            self._backward(dd, r, total, opts, logs, partial, diagnose)
        if not math.isfinite(logs["loss"]):
            raise RunError(
                f"the loss became {logs['loss']} at iteration {iteration + 1}; lower "
                "synthetic.lr or check the recipe"
            )
        if not self.shard.active:
            self._backward(dd, r, total, opts, logs, partial, diagnose)
        clip = self.recipe.synthetic.grad_clip
        if clip is not None and self.syn.images.grad is not None:
            torch.nn.utils.clip_grad_norm_([self.syn.images], clip)
        self.guard.note_start(self.syn.images)
        for o in opts:
            o.step()
        self.sched.step()
        if self.syn.lr is not None:
            logs["lr"] = float(self.syn.lr.detach())
        self.guard.after_step(iteration, self.syn.images, logs, diagnose)
        return logs

    def loop(self, start: int, progress: bool, callbacks: Iterable[Callback]) -> None:
        """Iterations ``start`` to the end, checkpointing every ``checkpoint_every``. After
        each iteration every observer (:meth:`observers`, then ``callbacks``) is called
        with ``(iteration, logs)``, iteration counted from 1."""
        total = self.recipe.synthetic.iterations
        every = self.recipe.output.checkpoint_every
        with contextlib.ExitStack() as outputs:
            observers = [*self.observers(outputs, start, progress), *callbacks]
            if start == 0:
                self.maybe_score(0)
            for it in range(start, total):
                logs = self.iterate(it)
                self.history.append({"iteration": it + 1, **logs})
                for observe in observers:
                    observe(it + 1, logs)
                self.maybe_score(it + 1)  # before the checkpoint, which keeps the score
                if every and (it + 1) % every == 0:
                    self.save_checkpoint(it + 1)
        self.save_checkpoint(total)

    def observers(self, outputs: contextlib.ExitStack, start: int,
                  progress: bool) -> list[Callback]:
        """What follows a run, each a callback ``(iteration, logs)``: the progress bar (with
        ``progress``), on rank 0 the streamed loss log, the loss curves and, without a
        bar, plain progress lines (mim4dd_kit/run/runlog.py), then the experiment trackers.
        Their files and displays are closed by ``outputs``; the curves are drawn there
        when the loop ends without an error."""
        total, out = self.recipe.synthetic.iterations, self.recipe.output
        main = ddp.is_main()
        shown_bar = progress and main
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[losses]}")]
        bar = outputs.enter_context(
            Progress(*columns, console=Console(stderr=True), disable=not shown_bar))
        task = bar.add_task(self.recipe.name, total=total, completed=start, losses="")
        observers: list[Callback] = [lambda it, logs: bar.update(
            task, advance=1, losses=runlog.format_losses(logs))]
        if main:
            stream = runlog.StreamingLog(self.run_dir, self.recipe.to_dict(), start,
                                         self.history)
            outputs.callback(stream.close)
            observers.append(stream.record)
            curves = runlog.LossCurves(self.run_dir, self.recipe.name, self.history[:start])
            outputs.push(lambda failed, *_: None if failed else curves.draw())
            observers.append(curves.record)
            if not shown_bar:
                lines = runlog.ProgressLines(self.recipe.name, start, total, out.log_every,
                                             out.log_seconds)
                observers.append(lambda it, logs: lines.update(it, runlog.format_losses(logs)))
        observers.append(lambda it, logs: self.trackers.iteration(it, logs, self.image_grid))
        return observers

    # -- evaluation checkpoints (run/best_of.py) ------------------------------------------
    def maybe_score(self, iteration: int) -> None:
        """Score the set at ``iteration`` when it is an evaluation checkpoint."""
        every = self.recipe.output.evaluate_every
        if not self.score_checkpoints or not best_of.due(
                iteration, every, self.recipe.synthetic.iterations):
            return
        if any(row["iteration"] == iteration for row in self.checkpoint_scores):
            return  # scored before the run was resumed
        evaluations = self.score()
        self.record_score(iteration, evaluations)
        self.trackers.evaluations(iteration, evaluations)  # the checkpoint's scores, at its step

    def score(self) -> dict[str, Any]:
        """The recipe's evaluators on the current set, as the final evaluation runs them
        (same seeds, hence the same networks), inside a fork of every random stream: the
        distillation continues exactly as it would without this evaluation."""
        r = self.recipe
        lr = None if self.syn.lr is None else float(self.syn.lr.detach())
        saved = rng_state()
        try:
            with isolated_rng(r.seed, self.device):
                return run_evaluators(
                    r.evaluators, self.syn.images.detach().clone(), self.syn.labels, lr,
                    self.data, device=self.device, seed=r.seed, backbone=r.backbone,
                    augmentation=r.augmentation, registry=self.registry,
                    formation=r.synthetic.formation,
                )
        finally:
            set_rng_state(saved)  # also the Python and NumPy streams, which fork_rng leaves

    def record_score(self, iteration: int, evaluations: dict[str, Any]) -> None:
        """Keep one checkpoint's scores and rewrite ``evaluations.jsonl`` (rank 0)."""
        self.checkpoint_scores.append(
            {"iteration": iteration, "evaluations": best_of.summary(evaluations)})
        if ddp.is_main():
            best_of.write_rows(self.run_dir, self.checkpoint_scores)

    # -- outputs --------------------------------------------------------------------------
    def image_grid(self):
        """The stored synthetic images as a class-per-row picture, (H, W, C) in [0, 1]."""
        info = self.data.info
        return plots.grid_array(self.syn.images.detach(), self.syn.labels, info.mean,
                                info.std)

    def provenance(self, iterations: int) -> dict[str, Any]:
        """The set's metadata (mim4dd_kit/core/provenance.py's schema)."""
        r = self.recipe
        return {
            **provenance.environment(),
            "components": provenance.components(self.registry, r.components()),
            "recipe": r.to_dict(),
            "recipe_fingerprint": r.fingerprint(),
            "seed": r.seed,
            "device": str(self.device),
            "dataset": provenance.dataset_entry(self.data),
            "started": self.started,
            "finished": provenance.now(),
            "iterations": iterations,
            "final_losses": {k: v for k, v in (self.history[-1] if self.history else {}).items()
                             if k != "iteration"},
            "distributed": {"world_size": self.shard.world_size, "backend": ddp.backend()},
            **({"formation": formation.metadata_entry(r.synthetic.formation)}
               if r.synthetic.formation > 1 else {}),
        }

    def write_logs(self) -> None:
        """Draw ``losses.png`` from :attr:`history`, for code that drives :meth:`step`
        itself instead of :meth:`loop` (whose observers draw it)."""
        curves = runlog.LossCurves(self.run_dir, self.recipe.name, self.history)
        curves.draw()


def run(
    recipe: Recipe | str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    callbacks: Iterable[Callback] = (),
    registry: Registry | None = None,
) -> RunResult:
    """Distill a data set as the recipe says and write the synthetic set.

    Returns where the outputs are and the evaluation results. ``resume`` continues from
    the run folder's checkpoint; without it an existing run folder is an error unless
    ``overwrite`` is given.

    Started by torchrun (or :func:`launch_run`), the process joins
    the group the environment describes and runs its share (docs/distributed.md); every
    rank returns the same result, and only rank 0 writes files.
    """
    registry = registry or default_registry()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides, registry)
    dev = resolve_device(device or recipe.device)
    joined = False
    if ddp.env_describes_group():
        joined = not torch.distributed.is_initialized()
        dev = ddp.init_from_env(dev)
    result = _run(recipe, dev, out, resume, overwrite, progress, evaluate, callbacks, registry)
    if joined:  # not after an error: peers may be gone, and NCCL's teardown can then block
        ddp.destroy()
    return result


def _run(
    recipe: Recipe,
    dev: torch.device,
    out: str | Path | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    evaluate: bool,
    callbacks: Iterable[Callback],
    registry: Registry,
) -> RunResult:
    run_dir = Path(out or recipe.output.dir or Path("runs") / recipe.name)
    final = run_dir / recipe.output.file
    if final.parent != run_dir or recipe.output.file in RESERVED_NAMES:
        raise RecipeError(f"output.file {recipe.output.file!r} must be a file name inside the "
                          f"run folder, other than {', '.join(sorted(RESERVED_NAMES))}")
    if recipe.output.evaluate_every is not None and not recipe.evaluators:
        raise RecipeError(f"output.evaluate_every is {recipe.output.evaluate_every} but "
                          "the recipe lists no evaluators to score the checkpoints with; "
                          "add one (e.g. evaluators: [{name: train_from_scratch}]) or set "
                          "output.evaluate_every to null")
    r = Run(recipe, run_dir, dev, registry)
    main = ddp.is_main()
    lock = RunLock(run_dir) if main else None
    if lock is not None:
        lock.acquire()  # also shows, before any work, that the folder can be written
    try:
        return _run_locked(r, final, resume, overwrite, progress, evaluate, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    r: Run,
    final: Path,
    resume: bool,
    overwrite: bool,
    progress: bool,
    evaluate: bool,
    callbacks: Iterable[Callback],
) -> RunResult:
    recipe, run_dir, registry = r.recipe, r.run_dir, r.registry
    has_ckpt = r.checkpoint_path.exists()
    legacy = run_dir / LEGACY_CHECKPOINT
    if not overwrite and legacy.exists():
        raise CheckpointError(
            f"{legacy} is a pickle checkpoint, which mdk does not read (loading a pickle can "
            "run arbitrary code); the file was left untouched. Pass --overwrite to start the "
            "run over, or choose another --out"
        )
    if not overwrite:
        if resume and not has_ckpt:
            raise RunError(
                f"--resume: {run_dir} holds no checkpoint ({CHECKPOINT}) to continue from; "
                + ("the run there has finished" if final.exists() else
                   "run without --resume to start")
            )
        if final.exists() and not has_ckpt:
            raise RunError(
                f"{final} already exists from a finished run; choose another --out or pass "
                "--overwrite to replace it"
            )
        if has_ckpt and not resume:
            raise RunError(
                f"{run_dir} holds a checkpoint of an unfinished run; pass --resume to "
                "continue it or --overwrite to start over"
            )
        if not has_ckpt:
            # a checkpoint shows that the folder's run outputs are this toolkit's; without
            # one, a file of the same name is someone else's and stays unless --overwrite
            taken = [n for n in LOG_NAMES if (run_dir / n).exists()]
            if taken and runlog.left_by_same_recipe(run_dir, recipe):
                taken = []  # this recipe's run stopped before its first checkpoint
            if taken:
                raise RunError(
                    f"{run_dir} already holds {', '.join(taken)}, which this run would "
                    "replace; choose another --out or pass --overwrite to replace them"
                )
    if ddp.is_main():
        remove_stale_temporaries(run_dir, [recipe.output.file, CHECKPOINT, *LOG_NAMES])
    ddp.barrier()  # every rank has looked at the folder before rank 0 writes to it
    # experiment trackers (rank 0), built before any work: a missing package stops the
    # run at once (mim4dd_kit/run/tracking.py)
    if ddp.is_main():
        r.trackers = tracking.Trackers.build(recipe.loggers, registry)
    try:
        result = _distill(r, final, resume and has_ckpt and not overwrite, overwrite,
                          progress, evaluate, callbacks)
    except KeyboardInterrupt:
        r.trackers.finish("interrupted")
        raise
    except BaseException:
        r.trackers.finish("failed")
        raise
    r.trackers.finish("finished")
    return result


def _distill(
    r: Run,
    final: Path,
    resuming: bool,
    overwrite: bool,
    progress: bool,
    evaluate: bool,
    callbacks: Iterable[Callback],
) -> RunResult:
    recipe, run_dir, dev, registry = r.recipe, r.run_dir, r.device, r.registry
    legacy = run_dir / LEGACY_CHECKPOINT
    t0 = time.perf_counter()
    r.setup()
    if not resuming and ddp.is_main():  # no checkpoint scores of an earlier run stay
        (run_dir / best_of.ROWS).unlink(missing_ok=True)
    r.score_checkpoints = bool(evaluate and recipe.evaluators
                               and recipe.output.evaluate_every is not None)
    start = r.load_checkpoint() if resuming else 0
    r.trackers.start(tracking.TrackedRun(run_dir, recipe.name, recipe.to_dict(), start,
                                         recipe.synthetic.iterations))
    r.loop(start, progress, list(callbacks))
    iterations = recipe.synthetic.iterations
    lr = None if r.syn.lr is None else float(r.syn.lr.detach())
    meta = r.provenance(iterations)
    meta["run_seconds"] = time.perf_counter() - t0
    main = ddp.is_main()
    if main:
        save_synthetic(final, r.syn.images, r.syn.labels, lr, meta)
    evaluations: dict[str, Any] = {}
    if evaluate and recipe.evaluators:
        # every rank takes part: evaluators may spread their networks over the ranks
        evaluations = run_evaluators(
            recipe.evaluators, r.syn.images.detach(), r.syn.labels, lr, r.data,
            device=dev, seed=recipe.seed, backbone=recipe.backbone,
            augmentation=recipe.augmentation, registry=registry,
            formation=recipe.synthetic.formation, progress_bar=progress,
        )
        extra: dict[str, Any] = {}
        if r.score_checkpoints:  # the final evaluation is the last checkpoint
            r.record_score(iterations, evaluations)
            extra = {"evaluation_checkpoints": r.checkpoint_scores,
                     "best_of": best_of.best_of(r.checkpoint_scores)}
        if main:
            update_metadata(final, evaluations=evaluations, **extra)
    r.trackers.evaluations(iterations, evaluations)
    if r.score_checkpoints:
        r.trackers.best_of(iterations, best_of.best_of(r.checkpoint_scores))
    if main:
        r.checkpoint_path.unlink(missing_ok=True)
        if overwrite:  # the run was started over past an old pickle checkpoint
            legacy.unlink(missing_ok=True)
    ddp.barrier()  # the outputs are complete before any rank returns
    best = best_of.best_of(r.checkpoint_scores) if r.score_checkpoints else {}
    return RunResult(run_dir, final, iterations, meta["final_losses"], evaluations,
                     list(r.checkpoint_scores) if r.score_checkpoints else [], best)


def current_shard() -> Shard:
    """This process's :class:`~mim4dd_kit.api.Shard` (``Shard()`` outside a group)."""
    rank, size = ddp.world()
    return Shard(rank, size)


def _run_recipe(recipe: Any, overrides: list[str], kwargs: dict[str, Any]) -> Any:
    return run(recipe, overrides=overrides, **kwargs)


def launch_run(
    nproc: int,
    recipe_path: Any,
    overrides: Sequence[str] = (),
    *,
    threads: int | None = None,
    **run_kwargs: Any,
) -> Any:
    """``engine.run(recipe_path, overrides=..., **run_kwargs)`` in ``nproc`` processes.

    The command line's ``mdk run --nproc-per-node N``. ``recipe_path`` is a recipe file
    (or a :class:`~mim4dd_kit.config.recipe.Recipe`); ``threads`` as in :func:`launch`. Returns
    rank 0's :class:`~mim4dd_kit.run.engine.RunResult`.
    """
    kwargs = {**run_kwargs}
    if "registry" in kwargs:
        raise RunError("launch_run starts new processes, which build their own registry; "
                       "install plugins as packages instead of passing a registry")
    results = ddp.launch(nproc, _run_recipe, recipe_path, list(overrides), kwargs, threads=threads)
    return results[0]
