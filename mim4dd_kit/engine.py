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

import datetime as _dt
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import __version__, performance, plots
from . import distributed as ddp
from .contracts import RealData, RunContext, Shard, SyntheticState, tapped_features
from .errors import CheckpointError, DataError, PluginError, RecipeError, RunError
from .evaluate import run_evaluators
from .recipe import Recipe, load_recipe
from .registry import Registry, default_registry
from .runtime import (
    cache_dir,
    isolated_rng,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .synthetic import atomic_write, save_synthetic, update_metadata

CHECKPOINT = "checkpoint.pt"
Callback = Callable[[int, dict[str, float]], None]


@dataclass
class RunResult:
    run_dir: Path
    synthetic_path: Path
    iterations: int
    final_losses: dict[str, float]
    evaluations: dict[str, Any]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _feature_shapes(make_backbone, info, device, tap: str = "output") -> list[tuple[int, ...]]:
    # a one-image probe gives each block's feature shape (without the batch) for any backbone
    probe = make_backbone().to(device).eval()
    with torch.no_grad():
        x = torch.zeros(1, info.channels, *info.image_size, device=device)
        return [tuple(f.shape[1:]) for f in tapped_features(probe, x, tap)]


#: guard rails (docs/components/mim4dd.md, "Guard rails")
GUARD_STD_FACTOR = 10.0  # pixel std above this multiple of its start: images blow up
GUARD_RATIO = 10.0  # regularizer image gradient above this multiple of the DD one ...
GUARD_CHECKS = 3  # ... at this many consecutive diagnostic iterations


def _sum_over_ranks(tensors: list[torch.Tensor], shard: Shard) -> list[torch.Tensor]:
    """Sum a list of tensors over ranks in one collective; returns new tensors."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    shard.sum(flat)
    return [piece.view_as(t).to(t.dtype)
            for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]


def _grad_logs(g_dd: list[torch.Tensor], g_reg: list[torch.Tensor] | None) -> dict[str, float]:
    """Norms of the DD and regularizer gradients on the images (and a learned lr)."""
    out = {"grad_dd": float(torch.linalg.vector_norm(g_dd[0]))}
    if len(g_dd) > 1:
        out["grad_dd_lr"] = float(g_dd[1].abs().sum())
    if g_reg is not None:
        out["grad_reg"] = float(torch.linalg.vector_norm(g_reg[0]))
        out["grad_ratio"] = out["grad_reg"] / out["grad_dd"] if out["grad_dd"] > 0 else math.inf
        if len(g_reg) > 1:
            out["grad_reg_lr"] = float(g_reg[1].abs().sum())
    return out


class RunGuard:
    """Diagnostic cadence and the run's guard rails.

    ``diagnose(it)`` says whether iteration ``it`` (0-based) logs diagnostics: the first
    and every ``diagnostics_every``-th, when the regularizer has that parameter.
    ``after_step`` logs the images' pixel std on those iterations and warns once on
    stderr when the images blow up (pixel std above ``GUARD_STD_FACTOR`` times its value
    at the first step) or when the regularizer's image gradient exceeds ``GUARD_RATIO``
    times the DD one at ``GUARD_CHECKS`` consecutive diagnostic iterations. Neither
    touches the run's tensors or random streams.
    """

    def __init__(self, reg) -> None:
        params = getattr(reg, "params", None)
        self.every = int(getattr(params, "diagnostics_every", 0) or 0)
        self.std0: float | None = None
        self.high = 0
        self.warned: set[str] = set()

    def diagnose(self, iteration: int) -> bool:
        return self.every > 0 and (iteration == 0 or (iteration + 1) % self.every == 0)

    def _warn(self, key: str, text: str) -> None:
        if key in self.warned or not ddp.is_main():
            return
        self.warned.add(key)
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def note_start(self, images: torch.Tensor) -> None:
        """Record the pixel std before the run's (or the resumed run's) first update."""
        if self.std0 is None:
            with torch.no_grad():
                self.std0 = float(images.detach().float().std())

    def after_step(self, iteration: int, images: torch.Tensor, logs: dict[str, float],
                   diagnose: bool) -> None:
        with torch.no_grad():
            std = float(images.detach().float().std())
        if diagnose:
            logs["img_std"] = std
        if self.std0 is None:
            self.std0 = std
        elif math.isfinite(self.std0) and self.std0 > 0 and std > GUARD_STD_FACTOR * self.std0:
            self._warn("std", f"the synthetic images' pixel std is {std:.3g} at iteration "
                       f"{iteration + 1}, {std / self.std0:.1f}x its start ({self.std0:.3g}): "
                       "the images are blowing up. Lower synthetic.lr, or the "
                       "regularizer's weight (regularizer.lambda, or regularizer.rho / "
                       "regularizer.preset: stable)")
        ratio = logs.get("grad_ratio")
        if ratio is None:
            return
        self.high = self.high + 1 if ratio > GUARD_RATIO else 0
        if self.high >= GUARD_CHECKS:
            self._warn("ratio", f"the regularizer's image gradient is {ratio:.3g}x the DD "
                       f"loss's (|grad reg| {logs.get('grad_reg', math.nan):.3g} vs |grad dd| "
                       f"{logs.get('grad_dd', math.nan):.3g}) at iteration {iteration + 1}, "
                       f"above {GUARD_RATIO:g}x for {self.high} checks in a row: the "
                       "regularizer dominates the base method. Lower regularizer.lambda, or "
                       "set regularizer.rho (e.g. 0.1) to tie it to the DD gradient")


class Run:
    """One distillation run; ``run()`` is the functional entry point."""

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device, registry: Registry):
        self.recipe, self.run_dir, self.device, self.registry = recipe, run_dir, device, registry
        self.history: list[dict[str, float]] = []
        self.started = _now()
        self.shard: Shard = ddp.current_shard()

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        r, reg = self.recipe, self.registry
        if self.shard.active:
            self.check_shardable()
        self.build_context()
        info = self.data.info
        make_backbone = self.ctx.make_backbone
        # where the regularizer's features are taken: the losses hand them over at this tap
        tap = (getattr(reg.validate("regularizers", r.regularizer), "tap", "output")
               if r.regularizer is not None else "output")
        self.ctx.feature_tap = tap
        self.loss = reg.build("dd_losses", r.dd_loss, ctx=self.ctx)
        # parts whose randomness must not move the main stream (so lambda = 0 or no
        # regularizer leave the base method's trajectory bit-identical)
        with isolated_rng(r.seed + 1, self.device):
            self.reg = None
            if r.regularizer is not None:
                shapes = _feature_shapes(make_backbone, info, self.device, tap)
                extra = ({"feature_shapes": shapes} if getattr(
                    reg.load("regularizers", r.regularizer.name), "takes_feature_shapes",
                    False) else {})
                self.reg = reg.build("regularizers", r.regularizer,
                                     num_classes=info.num_classes,
                                     feature_dims=[math.prod(sh) for sh in shapes],
                                     registry=reg, **extra).to(self.device)
        self.guard = RunGuard(self.reg)
        if self.reg is not None and self.shard.active:
            self.reg.shard = self.shard  # the real features it gets are this rank's rows
        self._init_synthetic()

    def check_shardable(self) -> None:
        """Refuse, before anything is built, a loss or regularizer that cannot take a
        shard of the real batch (class attribute ``shardable``)."""
        r, reg = self.recipe, self.registry
        size = self.shard.world_size
        if not getattr(reg.load("dd_losses", r.dd_loss.name), "shardable", False):
            able = []
            for name in reg.names("dd_losses"):
                try:
                    if getattr(reg.load("dd_losses", name), "shardable", False):
                        able.append(name)
                except PluginError:
                    continue
            raise RecipeError(
                f"dd_loss {r.dd_loss.name!r} cannot split its real batch over {size} "
                f"processes; run it in a single process, or use a dd loss that can: "
                f"{', '.join(able) or 'none installed'} (see docs/distributed.md)"
            )
        if r.regularizer is not None and not getattr(
                reg.load("regularizers", r.regularizer.name), "shardable", False):
            raise RecipeError(
                f"regularizer {r.regularizer.name!r} cannot take real features split over "
                f"{size} processes; run it in a single process (see docs/distributed.md)"
            )

    def build_context(self) -> RunContext:
        """Seed, load the data onto the device and build what every DD loss may use."""
        r, reg = self.recipe, self.registry
        seed_everything(r.seed)
        data: RealData = reg.build("datasets", r.dataset).load()
        if r.validation is not None:  # before anything (init, batches, experts) reads it
            data = data.hold_out(r.validation.per_class, r.validation.seed)
        self.data = data.to(self.device)
        info = self.data.info
        bb_cls = reg.load("backbones", r.backbone.name)
        bb_params = reg.validate("backbones", r.backbone)

        def build():
            return bb_cls(bb_params, channels=info.channels, num_classes=info.num_classes,
                          image_size=info.image_size)

        perf = r.performance
        performance.configure_backends(perf, self.device)
        make_backbone = performance.backbone_factory(build, perf, self.device)

        augment = (reg.build("augmentations", r.augmentation, data_info=info)
                   if r.augmentation is not None else None)
        s = r.synthetic
        self.ctx = RunContext(self.data, s.ipc, s.batch_real, self.device, make_backbone,
                              augment, r.seed, {"name": r.backbone.name, **r.backbone.params},
                              cache_dir(), {"name": r.dataset.name, **r.dataset.params},
                              self.shard, performance.chunk_bytes(perf))
        return self.ctx

    def _init_synthetic(self) -> None:
        s, info = self.recipe.synthetic, self.data.info
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
        self.sched = torch.optim.lr_scheduler.MultiStepLR(
            self.opt_img, milestones=s.schedule.milestones, gamma=s.schedule.gamma)
        self.opt_lr = None
        if s.learn_lr or getattr(self.loss, "learns_lr", False):
            init = s.lr_init if s.lr_init is not None else getattr(self.loss, "initial_lr", 0.01)
            self.syn.lr = torch.tensor(init, device=self.device, requires_grad=True)
            self.opt_lr = torch.optim.SGD([self.syn.lr], lr=s.lr_lr, momentum=0.5)
        params = list(self.reg.parameters()) if self.reg is not None else []
        self.opt_reg = torch.optim.Adam(params, lr=self.reg.lr) if params else None

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
            "fingerprint": self.recipe.fingerprint(),
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
        }
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> int:
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {self.checkpoint_path}: {exc}") from None
        if state.get("fingerprint") != self.recipe.fingerprint():
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} was made by a different recipe; resume "
                "with the recipe (and --set overrides) that started the run, or pass "
                "--overwrite to start over"
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
        self.started = state["started"]
        return int(state["iteration"])

    # -- the loop -------------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, float]:
        want = self.reg is not None
        with performance.autocast(self.recipe.performance, self.device):
            out = self.loss.compute(self.syn, iteration, want)
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
            if hasattr(self.reg, "iteration"):
                self.reg.iteration = iteration
            self._critic_only_steps(out, iteration)
            with performance.autocast(self.recipe.performance, self.device):
                r = self.reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
            r = r.float()
            total = total + r
            logs["loss_reg"] = float(r.detach())
            reg_logs = dict(getattr(self.reg, "last_logs", {}))
            if diagnose and hasattr(self.reg, "diagnostics"):
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

    # -- regularizer helpers (critic schedule, split gradients, diagnostics) --------------
    def _critic_only_steps(self, out, iteration: int) -> None:
        """Critic-only Adam steps on the iteration's detached features (``critic_steps``
        every iteration, plus ``critic_warmup`` at the run's first); the images, the
        learned lr and every random stream are untouched."""
        p = getattr(self.reg, "params", None)
        n = getattr(p, "critic_steps", 0) + (getattr(p, "critic_warmup", 0)
                                             if iteration == 0 else 0)
        if n == 0 or self.opt_reg is None:
            return
        syn = [f.detach() for f in out.syn_feats]
        real = [f.detach() for f in out.real_feats]
        critics = [q for g in self.opt_reg.param_groups for q in g["params"]]
        for _ in range(n):
            self.opt_reg.zero_grad(set_to_none=True)
            with performance.autocast(self.recipe.performance, self.device):
                loss = self.reg.critic_loss(syn, out.syn_labels, real, out.real_labels)
            loss.float().backward()
            if self.shard.active:
                ddp.sum_gradients(critics)
            self.opt_reg.step()

    def _backward(self, dd: torch.Tensor, r: torch.Tensor | None, total: torch.Tensor,
                  opts: list, logs: dict[str, float], partial: list[str],
                  diagnose: bool) -> None:
        """Fill the gradients of the learned tensors for this iteration.

        Without ``rho`` this is ``total.backward()`` (the joint objective); diagnostic
        iterations first take the regularizer's own image gradient with
        ``torch.autograd.grad`` (which leaves ``.grad`` and the update untouched). With
        ``rho`` the two gradients are taken separately and combined
        (:meth:`_rho_backward`). In a sharded run gradients and partial logs are summed.
        """
        for o in opts:
            o.zero_grad(set_to_none=True)
        scale = self.reg.image_scale() if hasattr(self.reg, "image_scale") else None
        if r is not None and scale is not None:
            self._rho_backward(dd, r, scale, logs, partial, diagnose)
            return
        targets = self._image_targets()
        g_reg = None
        if diagnose and r is not None:
            g_reg = [g if g is not None else torch.zeros_like(t) for g, t in zip(
                torch.autograd.grad(r, targets, retain_graph=True, allow_unused=True),
                targets, strict=True)]
        total.backward()
        if self.shard.active:
            params = [p for o in opts for g in o.param_groups for p in g["params"]]
            summed = ddp.sum_gradients(params, [logs[k] for k in partial])
            logs.update(zip(partial, summed, strict=True))
            if g_reg is not None:
                g_reg = _sum_over_ranks(g_reg, self.shard)
        if diagnose:
            g_all = [t.grad if t.grad is not None else torch.zeros_like(t) for t in targets]
            g_dd = g_all if g_reg is None else [a - b for a, b in zip(g_all, g_reg,
                                                                       strict=True)]
            logs.update(_grad_logs(g_dd, g_reg))

    def _image_targets(self) -> list[torch.Tensor]:
        """The images, and the learned lr where the run has one."""
        return [self.syn.images] + ([self.syn.lr] if self.opt_lr is not None else [])

    def _rho_backward(self, dd: torch.Tensor, r: torch.Tensor, scale: float,
                      logs: dict[str, float], partial: list[str], diagnose: bool) -> None:
        """Gradient-relative weight: the regularizer's image gradient is rescaled to
        ``scale`` times the DD image gradient's norm; the critics get the regularizer's
        own, unscaled gradient; a learned lr gets the DD gradient, plus the rescaled
        regularizer one only with ``lr_gradient``."""
        targets = self._image_targets()
        critics = [q for g in self.opt_reg.param_groups for q in g["params"]] \
            if self.opt_reg is not None else []

        def grads(value, wrt, retain):
            got = torch.autograd.grad(value, wrt, retain_graph=retain, allow_unused=True)
            return [g if g is not None else torch.zeros_like(t) for g, t in zip(got, wrt,
                                                                                strict=True)]

        g_dd = grads(dd, targets, True)
        g_reg = grads(r, targets + critics, False)
        if self.shard.active:
            g_dd = _sum_over_ranks(g_dd, self.shard)
            g_reg = _sum_over_ranks(g_reg, self.shard)
            values = _sum_over_ranks([torch.tensor([logs[k] for k in partial],
                                                   dtype=torch.float64, device=dd.device)],
                                     self.shard)[0].tolist()
            logs.update(zip(partial, values, strict=True))
        n_dd = torch.linalg.vector_norm(g_dd[0])
        n_reg = torch.linalg.vector_norm(g_reg[0])
        factor = torch.where(n_reg > 0, scale * n_dd / n_reg.clamp_min(1e-30),
                             torch.zeros_like(n_reg))
        applied = [g * factor for g in g_reg[:len(targets)]]
        self.syn.images.grad = g_dd[0] + applied[0]
        if len(targets) > 1:
            lr_grad = g_dd[1] + (applied[1] if self.reg.params.lr_gradient else 0.0)
            self.syn.lr.grad = lr_grad
        for q, g in zip(critics, g_reg[len(targets):], strict=True):
            q.grad = g
        if diagnose:
            logs.update(_grad_logs(g_dd, applied))
    def loop(self, start: int, progress: bool, callbacks: Iterable[Callback]) -> None:
        total = self.recipe.synthetic.iterations
        every = self.recipe.output.checkpoint_every
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[losses]}")]
        shown_bar = progress and ddp.is_main()
        with Progress(*columns, console=Console(stderr=True), disable=not shown_bar) as bar:
            task = bar.add_task(self.recipe.name, total=total, completed=start, losses="")
            for it in range(start, total):
                logs = self.step(it)
                self.history.append({"iteration": it + 1, **logs})
                shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith("loss"))
                bar.update(task, advance=1, losses=shown)
                for cb in callbacks:
                    cb(it + 1, logs)
                if every and (it + 1) % every == 0:
                    self.save_checkpoint(it + 1)
        self.save_checkpoint(total)

    # -- outputs --------------------------------------------------------------------------
    def provenance(self, iterations: int) -> dict[str, Any]:
        r, reg = self.recipe, self.registry
        components = []
        for key, ref in r.components():
            components.append({"key": key, **reg.provenance(ref.kind, ref.name)})
            for sub in reg.nested(reg.validate(ref.kind, ref)):
                components.append({"key": f"{key}.{sub.kind}", **reg.provenance(sub.kind,
                                                                                 sub.name)})
        info = self.data.info
        return {
            "toolkit_version": __version__,
            "components": components,
            "recipe": r.to_dict(),
            "recipe_fingerprint": r.fingerprint(),
            "seed": r.seed,
            "device": str(self.device),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "dataset": {**self.data.identity, "name": info.name,
                        "num_classes": info.num_classes, "class_names": list(info.class_names),
                        "channels": info.channels, "image_size": list(info.image_size),
                        "mean": list(info.mean), "std": list(info.std)},
            "started": self.started,
            "finished": _now(),
            "iterations": iterations,
            "final_losses": {k: v for k, v in (self.history[-1] if self.history else {}).items()
                             if k != "iteration"},
            "distributed": {"world_size": self.shard.world_size, "backend": ddp.backend()},
        }

    def write_logs(self) -> None:
        text = "".join(json.dumps(h) + "\n" for h in self.history)
        atomic_write(self.run_dir / "losses.jsonl",
                     lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        recipe_text = yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
        atomic_write(self.run_dir / "recipe.yaml",
                     lambda tmp: Path(tmp).write_text(recipe_text, encoding="utf-8"))
        if self.history and plots.have_matplotlib():
            # the paper's Fig. 4: base loss and regularizer per iteration (plot extra)
            plots.save_loss_curves(self.history, self.run_dir / "losses.png",
                                   title=self.recipe.name)


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

    Started by torchrun (or :func:`mim4dd_kit.distributed.launch_run`), the process joins
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
    r = Run(recipe, run_dir, dev, registry)
    has_ckpt = r.checkpoint_path.exists()
    if not overwrite:
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
    ddp.barrier()  # every rank has looked at the folder before rank 0 writes to it
    t0 = time.perf_counter()
    r.setup()
    start = r.load_checkpoint() if (resume and has_ckpt and not overwrite) else 0
    r.loop(start, progress, list(callbacks))
    iterations = recipe.synthetic.iterations
    lr = None if r.syn.lr is None else float(r.syn.lr.detach())
    meta = r.provenance(iterations)
    meta["run_seconds"] = time.perf_counter() - t0
    main = ddp.is_main()
    if main:
        save_synthetic(final, r.syn.images, r.syn.labels, lr, meta)
        r.write_logs()
    evaluations: dict[str, Any] = {}
    if evaluate and recipe.evaluators:
        # every rank takes part: evaluators may spread their networks over the ranks
        evaluations = run_evaluators(
            recipe.evaluators, r.syn.images.detach(), r.syn.labels, lr, r.data,
            device=dev, seed=recipe.seed, backbone=recipe.backbone,
            augmentation=recipe.augmentation, registry=registry,
        )
        if main:
            update_metadata(final, evaluations=evaluations)
    if main:
        r.checkpoint_path.unlink(missing_ok=True)
    ddp.barrier()  # the outputs are complete before any rank returns
    return RunResult(run_dir, final, iterations, meta["final_losses"], evaluations)
