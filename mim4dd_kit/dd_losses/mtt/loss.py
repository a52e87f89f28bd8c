"""Trajectory matching (Cazenavette et al., "Dataset Distillation by Matching Training
Trajectories", CVPR 2022).

Experts are backbones trained on the real data whose parameters were recorded after every
epoch (:mod:`.buffers`). Every call picks an expert e ~ U{0 .. num_experts - 1}
and a start epoch t ~ U{0 .. max_start_epoch - 1} (the engine's RNG), starts a student
at the expert's parameters θ*_t and takes N = ``syn_steps`` plain SGD steps on the
synthetic set with the learnable lr α = ``syn.lr`` (paper section 3.1, Algorithm 1):

    θ̂_{n+1} = θ̂_n − α ∇ ℓ(A(x_syn[B_n]); θ̂_n),        θ̂_0 = θ*_t

and returns the normalised parameter distance to the expert M = ``expert_epochs`` epochs
later (the normalised parameter-matching loss of section 3.1):

    L_DD = ||θ̂_N − θ*_{t+M}||² / ||θ*_t − θ*_{t+M}||²

``B_n`` walks through random permutations of the synthetic set in chunks of
``batch_syn`` (all at once when None), ``A`` is the run's per-sample augmentation. The
unroll is functional and keeps its graph, so the gradient reaches the images and α through
all N steps; memory is O(N) graphs. ``checkpoint`` (mim4dd_kit/training/unroll.py) replays
the steps in the backward pass in segments instead, storing only the parameters between
them: the same gradient for O(N) parameter vectors plus one segment's activations.

For MIM4DD (docs/plugins.md: which network gives each side) the real features come from
the expert at θ*_{t+M} on a real batch (no gradient), the synthetic ones from the student
θ̂_N on the synthetic set; both
batches go through one siamese augmentation draw (the same transformation per class), so
the critic compares the same view of both sides, as the student's steps (augmented) and
the expert's training (augmented real batches) do. The student's features keep the graph
of its steps, so the regularizer's gradient reaches the images (and α) through the unroll
as well; with the regularizer's ``network_gradient: false`` (the default preset's) the
student's weights are taken as given (``ctx.feature_network_gradient``) and the gradient
passes this one forward pass only.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import functional_call

from ...api import (
    DDLoss,
    ExpertBuffers,
    LossOutput,
    RunContext,
    SyntheticState,
    trained_weights,
)
from ...core.errors import DataError
from ...core.runtime import isolated_rng
from ...training.unroll import (
    FeaturesAndLogits,
    segment_length,
    unroll,
)
from ..params import MTTParams
from .buffers import (
    buffer_dir,
    ensure_buffer,
    expert_layout,
    expert_path,
    load_expert,
    load_expert_buffers,
    train_epochs,
)

_PREFIX = "net."  # parameter names of the wrapper module that returns (features, logits)


class MTT(DDLoss):
    """Matching training trajectories of experts trained on real data (MTT)."""

    learns_lr: ClassVar[bool] = True
    needs_expert_buffers: ClassVar[bool] = True

    Params = MTTParams

    @classmethod
    def build_expert_buffers(cls, params: MTT.Params, *, ctx: RunContext,
                             progress: bool = False) -> ExpertBuffers:
        """The experts under ``<cache>/buffers/<key>/`` (:mod:`.buffers`), the missing
        ones trained (``mdk buffer``)."""
        folder = buffer_dir(ctx, params)
        missing = sum(not expert_path(folder, i).exists() for i in range(params.num_experts))
        ensure_buffer(ctx, params, progress=progress)
        return ExpertBuffers(path=folder, experts=params.num_experts, trained=missing,
                             epochs=train_epochs(params))

    def __init__(self, params: MTT.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx
        # a template network for the functional calls; its values are never used, and
        # building it on its own stream keeps the run's random stream untouched
        with isolated_rng(ctx.seed, ctx.device):
            net = ctx.make_backbone().to(ctx.device)
        net.train()
        self.model = FeaturesAndLogits(net)
        # a run that has to build the buffer shows the experts training on a terminal
        self.folder = ensure_buffer(ctx, params, progress=sys.stderr.isatty())
        names, shapes = expert_layout(self.folder, 0)
        mine = [(n, list(p.shape)) for n, p in net.named_parameters()]
        if mine != list(zip(names, shapes, strict=True)):
            raise DataError(f"the experts in {self.folder} do not fit the recipe's backbone "
                            "(parameter names or shapes differ)")
        self.names = [_PREFIX + n for n in names]
        self.sizes = [p.numel() for _, p in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Flat (P,) -> {name: tensor}; fresh tensors, so the graph starts from constants."""
        parts = flat.split(self.sizes)
        return {n: t.reshape(s).clone()
                for n, t, s in zip(self.names, parts, self.shapes, strict=True)}

    @property
    def initial_lr(self) -> float:
        """Where the engine starts the learned lr unless ``synthetic.lr_init`` is set."""
        return self.params.lr_teacher

    def _buffers(self, bufs: dict[str, Tensor], row: int) -> dict[str, Tensor]:
        # clones: BatchNorm in train mode updates running statistics in place
        return {_PREFIX + k: v[row].to(self.ctx.device).clone() for k, v in bufs.items()}

    def _feature_batches(self, syn: SyntheticState, iteration: int
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """(real, real labels, synthetic) images for the regularizer's features.

        A real batch and one siamese augmentation draw (one transformation per class,
        applied to the real images and the synthetic set alike), so both sides of the
        critic see the same view; the synthetic side stays differentiable. Everything is
        drawn on a stream of its own (seed, iteration): a run without regularizer and one
        with lambda = 0 then take identical steps.
        """
        ctx = self.ctx
        with isolated_rng((ctx.seed * 1_000_003 + iteration + 1) % 2**63, ctx.device):
            real, real_y = ctx.data.sample_per_class(ctx.batch_real)
            images = syn.images
            if ctx.augment is not None:
                real, images = ctx.augment.siamese(real, real_y, images, syn.labels)
        return real.detach(), real_y, images

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, p = self.ctx, self.params
        expert = int(torch.randint(p.num_experts, ()).item())
        start_epoch = int(torch.randint(p.max_start_epoch, ()).item())
        epochs = [start_epoch, start_epoch + p.expert_epochs]
        rows = load_expert(self.folder, expert, epochs).to(ctx.device)  # (2, P)
        bufs = load_expert_buffers(self.folder, expert, epochs)
        start_flat, target_flat = rows[0], rows[1]
        student_bufs = self._buffers(bufs, 0)
        lr = syn.lr if syn.lr is not None else torch.tensor(p.lr_teacher, device=ctx.device)
        w = unroll(self.model, self._unflatten(start_flat), student_bufs, syn.images,
                   syn.labels, lr, steps=p.syn_steps, momentum=0.0, batch_syn=p.batch_syn,
                   augment=ctx.augment, minibatch="epoch",
                   checkpoint=segment_length(p.checkpoint))
        student_flat = torch.cat([w[n].reshape(-1) for n in self.names])
        # the reference divides both sums by the parameter count; it cancels in the ratio
        student_dist = ((student_flat - target_flat) ** 2).sum()
        expert_dist = ((start_flat - target_flat) ** 2).sum()
        loss = student_dist / expert_dist.clamp_min(torch.finfo(expert_dist.dtype).tiny)
        logs = {"mtt_expert": float(expert), "mtt_start_epoch": float(start_epoch),
                "mtt_student_dist": float(student_dist.detach()),
                "mtt_expert_dist": float(expert_dist)}
        if not want_features:
            return LossOutput(loss, logs=logs)
        real, real_y, syn_view = self._feature_batches(syn, iteration)
        target = {**self._unflatten(target_flat), **self._buffers(bufs, 1)}
        with torch.no_grad():
            real_feats, _ = functional_call(self.model, (target,), (real,),
                                            {"tap": ctx.feature_tap})
        student = trained_weights(w, ctx.feature_network_gradient)
        syn_feats, _ = functional_call(self.model, ({**student, **student_bufs},),
                                       (syn_view,), {"tap": ctx.feature_tap})
        return LossOutput(loss, syn_feats, syn.labels, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        # experts live in the cache; every draw comes from the engine's (checkpointed) RNG
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
