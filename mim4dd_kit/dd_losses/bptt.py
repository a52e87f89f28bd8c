"""Back-propagation through time (the bi-level baseline of Deng & Russakovsky, "Remember
the Past: Distilling Datasets into Addressable Memories for Neural Networks", NeurIPS 2022).

Every call trains a freshly initialised backbone from scratch on the synthetic set for
``inner_steps`` SGD-with-momentum steps at the fixed lr ``inner_lr`` (or the learned
``syn.lr`` when the recipe sets ``synthetic.learn_lr``),

    v_{t+1} = mu v_t + grad_w CE(w_t; x_syn[B_t])        (v_0 = 0, PyTorch SGD convention)
    w_{t+1} = w_t - lr v_{t+1}

and returns the meta-loss ``L_DD = CE(w_T; x_real)`` on a real batch (``augment``: the
run's augmentation on both the inner batches and the real batch; off by default, as in
the reference). The unroll is functional (``torch.func.functional_call`` on a dict of
parameter tensors, no module copy per step) and keeps its graph (``create_graph=True``),
so ``L_DD.backward()`` reaches the images (and a learned lr) through every kept step.

For MIM4DD the real features are the trained network's on the real batch, detached: a
fixed target that carries no gradient back into the unroll (the paper's real network is
independent of the synthetic set); the synthetic features keep their graph, through the
unroll too, unless the regularizer sets ``network_gradient: false`` (the default preset
does; ``ctx.feature_network_gradient``), which takes the trained model's weights as given.

Memory: a kept step stores the activations of its forward and its double-backward graph,
so memory is O(kept steps). With ``truncate = W`` only the last W steps keep a graph; the
earlier ones run on detached images/lr and their parameters are detached after each step,
so their graphs are freed as soon as the gradient is taken: memory is O(W) whatever
``inner_steps`` is. ``random_window`` samples the number of unrolled steps uniformly in
``[W, inner_steps]`` each call (random truncation of Feng et al., "Embarrassingly Simple
Dataset Distillation", ICLR 2024), still keeping the graph of the last W only.

``checkpoint`` replays the kept steps in the backward pass in segments instead of storing
their activations: the same gradient for O(kept steps) parameter vectors plus one
segment's activations (``mim4dd_kit/training/unroll.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..api import (
    DDLoss,
    LossOutput,
    RunContext,
    SyntheticState,
    for_regularizer,
    trained_weights,
)
from ..training.unroll import (
    FeaturesAndLogits,
    segment_length,
    unroll,
)
from .params import BPTTParams


class BPTT(DDLoss):
    """Bi-level distillation: backprop the real-data loss through an unrolled training run."""

    #: the inner lr is fixed (reference); ``synthetic.learn_lr: true`` learns it instead
    learns_lr: ClassVar[bool] = False

    Params = BPTTParams

    def __init__(self, params: BPTT.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx

    @property
    def initial_lr(self) -> float:
        """Start of a learned inner lr (``synthetic.learn_lr`` without ``lr_init``)."""
        return self.params.inner_lr

    def _schedule(self) -> tuple[int, int]:
        """(steps to unroll, first kept step); draws from the global RNG if random."""
        p = self.params
        steps = p.inner_steps
        if p.truncate is None or p.truncate >= steps:
            return steps, 0
        if p.random_window:
            steps = int(torch.randint(p.truncate, steps + 1, ()).item())
        return steps, steps - p.truncate

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        ctx, p = self.ctx, self.params
        net = ctx.make_backbone().to(ctx.device)
        net.train()
        model = FeaturesAndLogits(net)
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v for k, v in model.named_buffers()}
        lr = syn.lr if syn.lr is not None else torch.tensor(p.inner_lr, device=ctx.device)
        augment = ctx.augment if p.augment else None
        steps, keep_from = self._schedule()
        w = unroll(model, params, buffers, syn.images, syn.labels, lr, steps=steps,
                   momentum=p.momentum, batch_syn=p.batch_syn, keep_from=keep_from,
                   augment=augment, checkpoint=segment_length(p.checkpoint))
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        if augment is not None:
            real = augment(real)
        # one forward of the trained model on real data gives both the meta-loss and the
        # real features (the same RNG draws with and without want_features)
        real_feats, logits = functional_call(model, ({**w, **buffers},), (real.detach(),))
        loss = F.cross_entropy(logits, real_y)
        logs = {"bptt_steps": float(steps)}
        if not want_features:
            return LossOutput(loss, logs=logs)
        # the real side of the regularizer is a fixed target (grad=False detaches it): the
        # network that produced it was trained on the synthetic set, but the paper's real
        # network is independent of it, so no gradient may flow back into the unroll
        real_feats = for_regularizer(ctx.feature_tap, lambda x, t: functional_call(
            model, ({**w, **buffers},), (x,), {"tap": t})[0], real.detach(), real_feats,
            grad=False)
        trained = trained_weights(w, ctx.feature_network_gradient)
        syn_feats, _ = functional_call(model, ({**trained, **buffers},), (syn.images,),
                                       {"tap": ctx.feature_tap})
        return LossOutput(loss, syn_feats, syn.labels, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a fresh network every call; randomness is the engine's global RNG

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
