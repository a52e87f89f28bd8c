"""The regularizer's side of an engine step: critic-only steps, the gradient-relative
weight, diagnostics and guard rails (docs/components/mim4dd.md).

:class:`RegularizerSteps` is mixed into :class:`mim4dd_kit.run.engine.Run`; it reads the
run's ``reg``, ``syn``, ``opt_reg``, ``opt_lr``, ``shard`` and ``recipe``. Everything a
regularizer may offer has a default in :class:`mim4dd_kit.api.Regularizer`
(``critic_steps``, ``critic_loss``, ``image_scale``, ``diagnostics``,
``diagnostics_every``), so other regularizers keep the plain joint step.
"""

from __future__ import annotations

import math
import sys

import torch

from ..api import Shard
from ..config import performance
from ..core import distributed as ddp

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
        self.every = 0 if reg is None else reg.diagnostics_every()
        self.has_reg = reg is not None
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
                       "the images are blowing up. Lower synthetic.lr"
                       + (", or the regularizer's weight (regularizer.lambda, or "
                          "regularizer.rho / regularizer.preset: critic_free)"
                          if self.has_reg else ""))
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




class RegularizerSteps:
    """Run methods for the regularizer's part of an iteration."""

    def _critic_only_steps(self, out, iteration: int) -> None:
        """Critic-only Adam steps on the iteration's detached features (``critic_steps``
        every iteration, plus ``critic_warmup`` at the run's first); the images, the
        learned lr and every random stream are untouched."""
        n = self.reg.critic_steps(iteration)
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
        scale = None if self.reg is None else self.reg.image_scale()
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
        ``scale`` times the DD image gradient's norm (as the regularizer's
        ``reference_norm`` gives it); the critics get the regularizer's
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
        n_ref = self.reg.reference_norm(n_dd)
        factor = torch.where(n_reg > 0, scale * n_ref / n_reg.clamp_min(1e-30),
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
