"""Back-propagation through time (the bi-level baseline of Deng & Russakovsky, "Remember
the Past: Distilling Datasets into Addressable Memories for Neural Networks", NeurIPS 2022).

Every call trains a freshly initialised backbone from scratch on the synthetic set for
``inner_steps`` SGD-with-momentum steps with the learnable lr ``syn.lr``,

    v_{t+1} = mu v_t + grad_w CE(w_t; x_syn[B_t])        (v_0 = 0, PyTorch SGD convention)
    w_{t+1} = w_t - lr v_{t+1}

and returns the meta-loss ``L_DD = CE(w_T; A(x_real))`` on a real batch. The unroll is
functional (``torch.func.functional_call`` on a dict of parameter tensors, no module copy
per step) and keeps its graph (``create_graph=True``), so ``L_DD.backward()`` reaches the
images and the lr through every kept step.

Memory: a kept step stores the activations of its forward and its double-backward graph,
so memory is O(kept steps). With ``truncate = W`` only the last W steps keep a graph; the
earlier ones run on detached images/lr and their parameters are detached after each step,
so their graphs are freed as soon as the gradient is taken: memory is O(W) whatever
``inner_steps`` is. ``random_window`` samples the number of unrolled steps uniformly in
``[W, inner_steps]`` each call (random truncation of Feng et al., "Embarrassingly Simple
Dataset Distillation", ICLR 2024), still keeping the graph of the last W only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.func import functional_call

from ..contracts import Backbone, LossOutput, Params, RunContext, SyntheticState


class _FeaturesAndLogits(nn.Module):
    """Wraps a backbone so one functional call returns (block features, logits)."""

    def __init__(self, net: Backbone):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        feats = self.net.features(x)
        return feats, self.net.classify(feats[-1])


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
) -> dict[str, Tensor]:
    """Train ``model`` functionally for ``steps`` steps from ``params``; return the final ones.

    ``images`` (M, C, H, W), ``labels`` (M,), ``lr`` a scalar tensor. Steps with index
    ``< keep_from`` keep no graph to ``images``/``lr`` (truncated); the others use
    ``create_graph=True``. ``model`` returns logits, or (features, logits).
    Minibatches (``batch_syn``) and ``augment`` draw from the global torch RNG:
    ``minibatch="random"`` draws ``batch_syn`` images afresh every step; ``"epoch"`` walks
    through random permutations of the set in chunks of ``batch_syn`` (a new permutation
    when one is used up; the last chunk may be smaller), as MTT's reference does.
    """
    if minibatch not in ("random", "epoch"):
        raise ValueError(f"minibatch must be 'random' or 'epoch', got {minibatch!r}")
    names = list(params)
    chunks: list[Tensor] = []
    velocity = [torch.zeros_like(p) for p in params.values()]
    w = [p.detach() for p in params.values()]
    for t in range(steps):
        kept = t >= keep_from
        if t == keep_from:
            # entering the kept window: the truncated prefix's state becomes a constant
            w = [p.detach() for p in w]
            velocity = [v.detach() for v in velocity]
        x, y = images, labels
        if batch_syn is not None and batch_syn < len(labels):
            if minibatch == "random":
                idx = torch.randperm(len(labels), device=labels.device)[:batch_syn]
            else:
                if not chunks:
                    chunks = list(torch.randperm(len(labels), device=labels.device)
                                  .split(batch_syn))
                idx = chunks.pop(0)
            x, y = x[idx], y[idx]
        step_lr = lr if kept else lr.detach()
        if not kept:
            x = x.detach()
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
            grads = torch.autograd.grad(loss, w, create_graph=kept)
        velocity = [momentum * v + g for v, g in zip(velocity, grads, strict=True)]
        w = [p - step_lr * v for p, v in zip(w, velocity, strict=True)]
        if not kept:
            w = [p.detach() for p in w]
            velocity = [v.detach() for v in velocity]
    return dict(zip(names, w, strict=True))


class BPTT:
    """Bi-level distillation: backprop the real-data loss through an unrolled training run."""

    learns_lr: ClassVar[bool] = True

    class Params(Params):
        inner_steps: int = Field(
            20, ge=1, description="unrolled SGD steps per call (RememberThePast config: 20)"
        )
        momentum: float = Field(0.9, ge=0, lt=1, description="inner SGD momentum (reference 0.9)")
        batch_syn: int | None = Field(
            None, ge=1, description="synthetic images per inner step; None: the whole set"
        )
        truncate: int | None = Field(
            None, ge=1, description="keep the graph of only the last N inner steps; None: all"
        )
        random_window: bool = Field(
            False, description="with truncate: unroll a random number of steps in "
            "[truncate, inner_steps] each call (random truncated BPTT)"
        )

        @model_validator(mode="after")
        def _window(self) -> BPTT.Params:
            if self.random_window and self.truncate is None:
                raise ValueError("random_window needs truncate")
            return self

    def __init__(self, params: BPTT.Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx

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
        model = _FeaturesAndLogits(net)
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v for k, v in model.named_buffers()}
        lr = syn.lr if syn.lr is not None else torch.tensor(0.01, device=ctx.device)
        steps, keep_from = self._schedule()
        w = unroll(model, params, buffers, syn.images, syn.labels, lr, steps=steps,
                   momentum=p.momentum, batch_syn=p.batch_syn, keep_from=keep_from,
                   augment=ctx.augment)
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        if ctx.augment is not None:
            real = ctx.augment(real)
        # one forward of the trained model on real data gives both the meta-loss and the
        # real features (the same RNG draws with and without want_features)
        real_feats, logits = functional_call(model, ({**w, **buffers},), (real.detach(),))
        loss = F.cross_entropy(logits, real_y)
        logs = {"bptt_steps": float(steps)}
        if not want_features:
            return LossOutput(loss, logs=logs)
        syn_feats, _ = functional_call(model, ({**w, **buffers},), (syn.images,))
        return LossOutput(loss, syn_feats, syn.labels, real_feats, real_y, logs)

    def state_dict(self) -> dict[str, Any]:
        return {}  # a fresh network every call; randomness is the engine's global RNG

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
