"""Unrolled inner training with a graph to the synthetic set, and its checkpointing.

:func:`unroll` trains a network functionally (``torch.func.functional_call`` on a dict of
parameter tensors, no module copy per step) with SGD with momentum on the synthetic set and
keeps the graph of the kept steps (``create_graph=True``), so a loss on the final
parameters back-propagates to the images and a learned lr. Used by ``bptt`` (a fresh
network) and ``mtt`` (a student started at an expert's parameters).

Truncation: steps before ``keep_from`` run on detached images/lr, and their parameters are
detached after each step, so their graphs are freed at once: memory is O(kept steps).

``checkpoint`` (gradient checkpointing of the unroll, the recompute-in-backward idea of
Chen et al., "Training Deep Nets with Sublinear Memory Cost", 2016) keeps the exact
gradient of every kept step but stores only the parameters and velocity at the borders of
segments of k steps: the forward pass runs each segment without a graph, the backward pass
replays it with a graph (same minibatches and augmentation: the RNG state at the segment's
start is restored) and back-propagates through it, one segment at a time. Memory is then
O(kept steps x parameters + k x activations) for about one extra inner forward/backward
per step. ``torch.utils.checkpoint`` is not used: its non-reentrant variant replays the
segment from inside the forward pass whenever the inner ``torch.autograd.grad`` unpacks a
saved activation, which measured slower *and* larger than no checkpointing here, and its
reentrant variant does not support ``torch.autograd.grad`` on the outer loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import get_device_states, set_device_states

from ..api import Backbone, tapped_features

# defined without torch, for the losses' parameters models
from .params import CheckpointOption as CheckpointOption
from .params import checkpoint_field as checkpoint_field


def segment_length(option: bool | int) -> int:
    """The ``checkpoint`` option as ``unroll``'s segment length (0: off)."""
    return int(option)  # False -> 0, True -> 1, k -> k


class FeaturesAndLogits(nn.Module):
    """Wraps a backbone so one functional call returns (block features, logits)."""

    def __init__(self, net: Backbone):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, tap: str = "output") -> tuple[list[Tensor], Tensor | None]:
        if tap != "output":  # features at another tap only (for a regularizer): no logits
            return tapped_features(self.net, x, tap), None
        feats = self.net.features(x)
        return feats, self.net.classify(feats[-1])


class _Batches:
    """Minibatch indices of the inner steps, drawn from the global torch RNG.

    ``"random"``: ``batch`` indices afresh every step; ``"epoch"``: chunks of ``batch`` of
    random permutations, a new one when one is used up. ``copy()`` snapshots the state, so a
    replayed segment draws the same chunks.
    """

    def __init__(self, n: int, batch: int | None, mode: str, device: torch.device,
                 chunks: list[Tensor] | None = None):
        self.n, self.batch, self.mode, self.device = n, batch, mode, device
        self.chunks = list(chunks or [])

    def copy(self) -> _Batches:
        return _Batches(self.n, self.batch, self.mode, self.device, self.chunks)

    def draw(self) -> Tensor | None:
        if self.batch is None or self.batch >= self.n:
            return None
        if self.mode == "random":
            return torch.randperm(self.n, device=self.device)[: self.batch]
        if not self.chunks:
            self.chunks = list(torch.randperm(self.n, device=self.device).split(self.batch))
        return self.chunks.pop(0)


def _step(model: nn.Module, names: list[str], momentum: float, augment: Any,
          buffers: dict[str, Tensor], w: list[Tensor], velocity: list[Tensor], images: Tensor,
          labels: Tensor, lr: Tensor, batches: _Batches, keep: bool,
          ) -> tuple[list[Tensor], list[Tensor]]:
    """One inner SGD step. ``keep``: with a graph to ``images``/``lr``/``w`` (second order);
    otherwise on detached inputs, returning detached parameters and velocity."""
    idx = batches.draw()
    x, y = (images, labels) if idx is None else (images[idx], labels[idx])
    if not keep:
        x, lr = x.detach(), lr.detach()
        # leaves with grad, so the inner gradient exists; no graph survives the step
        w = [p.detach().requires_grad_(True) for p in w]
    elif not any(p.requires_grad for p in w):
        w = [p.requires_grad_(True) for p in w]  # first kept step from constants
    if augment is not None:
        x = augment(x)
    with torch.enable_grad():
        out = functional_call(model, ({**dict(zip(names, w, strict=True)), **buffers},), (x,))
        logits = out[1] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, w, create_graph=keep)
    velocity = [momentum * v + g for v, g in zip(velocity, grads, strict=True)]
    w = [p - lr * v for p, v in zip(w, velocity, strict=True)]
    if not keep:
        w = [p.detach() for p in w]
        velocity = [v.detach() for v in velocity]
    return w, velocity


class _Segment:
    """k kept steps that run without a graph now and are replayed with one in backward.

    Made at the segment's start: it snapshots the minibatch state, the buffers (train-mode
    BatchNorm updates them in place) and the RNG (CPU and the images' device), so the
    replay draws the same minibatches and augmentations and leaves the live state alone.
    """

    def __init__(self, step: Callable[..., tuple[list[Tensor], list[Tensor]]], n: int,
                 labels: Tensor, batches: _Batches, buffers: dict[str, Tensor],
                 images: Tensor):
        self.step, self.n, self.labels = step, n, labels
        self.batches, self.buffers = batches, buffers
        self.start_batches = batches.copy()
        self.start_buffers = {k: v.clone() for k, v in buffers.items()}
        self.device_type = images.device.type if images.device.type != "cpu" else "cuda"
        self.cpu_rng = torch.get_rng_state()
        self.devices, self.device_rng = get_device_states(images)

    def run(self, w: list[Tensor], velocity: list[Tensor], images: Tensor, lr: Tensor,
            ) -> tuple[list[Tensor], list[Tensor]]:
        """The forward pass: the live minibatch state and buffers advance, no graph."""
        for _ in range(self.n):
            w, velocity = self.step(self.buffers, w, velocity, images, self.labels, lr,
                                    self.batches, False)
        return w, velocity

    def replay(self, w: list[Tensor], velocity: list[Tensor], images: Tensor, lr: Tensor,
               ) -> tuple[list[Tensor], list[Tensor]]:
        """The same steps with a graph, from copies of the start state and RNG."""
        batches = self.start_batches.copy()
        buffers = {k: v.clone() for k, v in self.start_buffers.items()}
        with torch.random.fork_rng(devices=self.devices, device_type=self.device_type):
            torch.set_rng_state(self.cpu_rng)
            set_device_states(self.devices, self.device_rng, device_type=self.device_type)
            for _ in range(self.n):
                w, velocity = self.step(buffers, w, velocity, images, self.labels, lr,
                                        batches, True)
        return w, velocity


class _Recompute(torch.autograd.Function):
    """Autograd node of one :class:`_Segment`: inputs ``(*w, *velocity, images, lr)``,
    outputs ``(*w, *velocity)`` after the segment; backward replays and differentiates it."""

    @staticmethod
    def forward(ctx: Any, seg: _Segment, n_w: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.seg, ctx.n_w = seg, n_w
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        w, velocity = seg.run(list(tensors[:n_w]), list(tensors[n_w:2 * n_w]), tensors[-2],
                              tensors[-1])
        return (*w, *velocity)

    @staticmethod
    def backward(ctx: Any, *grad_out: Tensor | None) -> tuple[Tensor | None, ...]:
        # the replay starts from fresh nodes, so the gradients stop at this segment's
        # inputs; with create_graph in the outer backward (a gradient of the
        # meta-gradient) they are aliases of the inputs, so the result's graph reaches them
        higher = torch.is_grad_enabled()
        needs = ctx.needs_input_grad[2:]
        inputs = [t.view_as(t) if higher and need else t.detach().requires_grad_(need)
                  for t, need in zip(ctx.saved_tensors, needs, strict=True)]
        n_w = ctx.n_w
        with torch.enable_grad():
            w = [p if p.requires_grad else p.requires_grad_(True)  # inner gradient's leaves
                 for p in inputs[:n_w]]
            w, velocity = ctx.seg.replay(w, inputs[n_w:2 * n_w], inputs[-2], inputs[-1])
        pairs = [(o, g) for o, g in zip([*w, *velocity], grad_out, strict=True)
                 if g is not None and o.requires_grad]
        wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
        got: tuple[Tensor | None, ...] = (None,) * len(wanted)
        if pairs and wanted:
            got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                      allow_unused=True, create_graph=higher)
        it = iter(got)
        return (None, None, *[next(it) if need else None for need in needs])


def unroll(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    lr: Tensor,
    *,
    steps: int,
    momentum: float,
    batch_syn: int | None = None,
    keep_from: int = 0,
    augment: Any = None,
    minibatch: Literal["random", "epoch"] = "random",
    checkpoint: int = 0,
) -> dict[str, Tensor]:
    """Train ``model`` functionally for ``steps`` steps from ``params``; return the final ones.

    ``images`` (M, C, H, W), ``labels`` (M,), ``lr`` a scalar tensor. Steps with index
    ``< keep_from`` keep no graph to ``images``/``lr`` (truncated); the others use
    ``create_graph=True``. ``model`` returns logits, or (features, logits).
    Minibatches (``batch_syn``) and ``augment`` draw from the global torch RNG:
    ``minibatch="random"`` draws ``batch_syn`` images afresh every step; ``"epoch"`` walks
    through random permutations of the set in chunks of ``batch_syn`` (a new permutation
    when one is used up; the last chunk may be smaller), as MTT's reference does.
    ``checkpoint = k > 0`` runs the kept steps in segments of k that store no activations
    and are replayed in the backward pass (same values, same gradients, same RNG draws).
    """
    if minibatch not in ("random", "epoch"):
        raise ValueError(f"minibatch must be 'random' or 'epoch', got {minibatch!r}")
    if checkpoint < 0:
        raise ValueError(f"checkpoint must be >= 0 (0: off), got {checkpoint}")
    names = list(params)
    step = functools.partial(_step, model, names, momentum, augment)
    batches = _Batches(len(labels), batch_syn, minibatch, labels.device)
    keep_from = max(0, min(keep_from, steps))
    velocity = [torch.zeros_like(p) for p in params.values()]
    w = [p.detach() for p in params.values()]
    for _ in range(keep_from):  # the truncated prefix: no graph survives a step
        w, velocity = step(buffers, w, velocity, images, labels, lr, batches, False)
    if checkpoint == 0:
        for _ in range(keep_from, steps):
            w, velocity = step(buffers, w, velocity, images, labels, lr, batches, True)
    else:
        for start in range(keep_from, steps, checkpoint):
            seg = _Segment(step, min(checkpoint, steps - start), labels, batches, buffers,
                           images)
            out = _Recompute.apply(seg, len(w), *w, *velocity, images, lr)
            w, velocity = list(out[:len(w)]), list(out[len(w):])
    return dict(zip(names, w, strict=True))
