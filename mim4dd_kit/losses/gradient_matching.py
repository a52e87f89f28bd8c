"""Shared machinery of the gradient-matching losses (``dc``, ``dsa``, ``dream``) and of the
persistent network that ``dc`` and ``cafe`` train on the synthetic set between image updates.

Gradient matching (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
ICLR 2021, Eq. 9-10; reference code VICO-UoE/DatasetCondensation ``utils.py``): for every
class c, ``g_real^c = grad_theta CE(net(x_real^c), c)`` and ``g_syn^c`` the same on the class's
synthetic images; ``L = sum_c D(g_real^c, g_syn^c)``. All C per-class gradients come from
one vectorised call (``torch.func.vmap`` over classes of ``torch.func.grad``), the synthetic
side keeping its graph so that ``L.backward()`` reaches the images.

Distances (``match_distance``), each summed over parameter tensors (reference
``match_loss`` / ``distance_wb``):

- ``ours``: a gradient reshaped to (out, -1) (conv (out, in, h, w) -> (out, in*h*w), linear
  as is) gives ``sum_rows (1 - <r, s> / (|r| |s| + 1e-6))``; 1-D tensors (biases, norm
  affines) give 0;
- ``mse``: ``sum (g_syn - g_real)^2`` over every parameter;
- ``cos``: ``1 - <r, s> / (|r| |s| + 1e-6)`` of the whole flattened gradient vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..contracts import Backbone, RunContext
from .bptt import _FeaturesAndLogits

Distance = Literal["ours", "mse", "cos"]

#: (outer_loop, inner_loop) by IPC, reference ``get_loops`` (VICO-UoE/DatasetCondensation
#: ``utils.py``)
LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10),
}
EPS = 1e-6  # reference distance_wb / match_loss denominators


def get_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc``: the reference table, else the nearest listed IPC.

    The reference stops for an IPC outside its table; here the nearest entry is used (ties
    go to the larger IPC), e.g. IPC 3 -> IPC 1's (1, 1), IPC 100 -> IPC 50's (50, 10).
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    nearest = min(LOOPS, key=lambda k: (abs(k - ipc), -k))
    return LOOPS[nearest]


# ----------------------------------------------------------------------------- distances


def _rows(g: Tensor) -> Tensor:
    """(C, out, ...) -> (C, out, rest): one row per output unit (reference distance_wb)."""
    return g.reshape(g.shape[0], g.shape[1], -1)


def match_distance(g_real: list[Tensor], g_syn: list[Tensor], kind: Distance) -> Tensor:
    """Per-class gradient distance (C,) between two lists of gradients shaped (C, *param)."""
    if len(g_real) != len(g_syn):
        raise ValueError(f"{len(g_real)} real vs {len(g_syn)} synthetic gradient tensors")
    c = g_real[0].shape[0]
    total = g_real[0].new_zeros(c)
    if kind == "ours":
        for gr, gs in zip(g_real, g_syn, strict=True):
            if gr.dim() <= 2:  # 1-D parameter (plus the class dim): not matched
                continue
            r, s = _rows(gr), _rows(gs)
            cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + EPS)  # (C, out)
            total = total + (1 - cos).sum(-1)
        return total
    if kind == "mse":
        for gr, gs in zip(g_real, g_syn, strict=True):
            total = total + ((gs - gr) ** 2).reshape(c, -1).sum(-1)
        return total
    if kind == "cos":
        dot, nr, ns = total, total, total
        for gr, gs in zip(g_real, g_syn, strict=True):
            r, s = gr.reshape(c, -1), gs.reshape(c, -1)
            dot = dot + (r * s).sum(-1)
            nr = nr + (r * r).sum(-1)
            ns = ns + (s * s).sum(-1)
        return 1 - dot / (nr.sqrt() * ns.sqrt() + EPS)
    raise ValueError(f"unknown gradient distance {kind!r}; use ours, mse or cos")


# ------------------------------------------------------------------ per-class gradients


def class_gradients(
    net: Backbone, x: Tensor, y: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """Gradients of ``CE(net(x[c]), y[c])`` w.r.t. every parameter, for all classes at once.

    ``x`` (C, n, ch, H, W), ``y`` (C, n). Returns the gradients (one tensor (C, *param) per
    parameter, in ``net.parameters()`` order) and the block features of the same forward
    (one tensor (C, n, ...) per block). The network's parameters are treated as constants
    of the outer graph: if ``x`` carries a graph (synthetic images), gradients and features
    are differentiable w.r.t. it (torch.func composes with regular autograd); otherwise
    they carry no graph. Buffers are read, never updated (BatchNorm must be in eval mode).
    """
    model = _FeaturesAndLogits(net)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, Tensor], xc: Tensor, yc: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats, logits = functional_call(model, (p, buffers), (xc,))
        return F.cross_entropy(logits, yc), feats

    grads, feats = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    return list(grads.values()), list(feats)


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def freeze_batchnorm(net: nn.Module, real: Tensor) -> None:
    """Set BatchNorm statistics from a real batch in train mode, then fix them (eval mode).

    Reference ``main.py``: a synthetic batch (one image per class at IPC 1) is too small
    for stable batch statistics, so 16 real images per class set them before matching.
    """
    net.train()
    with torch.no_grad():
        net(real)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ---------------------------------------------------------- network trained between calls


def sgd_steps(
    net: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
    steps: int, batch: int | None, augment: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """``steps`` SGD steps, each on a random minibatch of ``batch`` images (None: all)."""
    for _ in range(steps):
        x, y = images, labels
        if batch is not None and batch < len(y):
            idx = torch.randperm(len(y), device=y.device)[:batch]
            x, y = x[idx], y[idx]
        if augment is not None:
            x = augment(x)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()


def sgd_epochs(
    net: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
    epochs: int, batch: int, augment: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """``epochs`` passes over a shuffled set in minibatches of ``batch`` (last one partial),
    as the reference's ``DataLoader(shuffle=True)`` + ``epoch('train', ...)``."""
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=labels.device)
        for idx in order.split(batch):
            x = images[idx]
            if augment is not None:
                x = augment(x)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), labels[idx]).backward()
            opt.step()


class TrainedNetwork:
    """A network and its SGD optimizer that a DD loss trains between image updates; saves
    and restores both with the loss's state (shared by gradient matching and CAFE)."""

    def __init__(self, ctx: RunContext, *, lr: float, momentum: float):
        self.ctx, self.lr, self.momentum = ctx, lr, momentum
        self.net: Backbone | None = None
        self.opt: torch.optim.Optimizer | None = None

    def _new_net(self) -> None:
        self.net = self.ctx.make_backbone().to(self.ctx.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=self.momentum)

    def _net_state(self) -> dict[str, Any]:
        return {"net": None if self.net is None else self.net.state_dict(),
                "opt": None if self.opt is None else self.opt.state_dict()}

    def _restore_net(self, state: dict[str, Any]) -> None:
        self.net = self.opt = None
        if state.get("net") is not None:
            # building consumes RNG, but the engine restores the RNG state afterwards
            self._new_net()
            assert self.net is not None and self.opt is not None
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])


class PersistentNetwork(TrainedNetwork):
    """A network re-initialised every ``outer_loop`` calls and trained in between.

    ``advance(train)`` is called once per loss call: call n builds a fresh network (and its
    SGD optimizer) when ``n % outer_loop == 0`` and otherwise first runs ``train(net, opt)``
    (the method's inner loop on the detached synthetic set). It returns the network with
    its parameters frozen (``requires_grad`` off), so the engine's backward reaches only the
    images. ``state_dict`` holds the network, its optimizer and the call counter.
    """

    def __init__(self, ctx: RunContext, *, outer_loop: int, lr: float, momentum: float):
        super().__init__(ctx, lr=lr, momentum=momentum)
        self.outer_loop = outer_loop
        self.calls = 0

    @property
    def position(self) -> int:
        """Index of the latest call within its network's life (0: the network is new)."""
        return (self.calls - 1) % self.outer_loop

    def advance(self, train: Callable[[Backbone, torch.optim.Optimizer], None]) -> Backbone:
        if self.net is None or self.calls % self.outer_loop == 0:
            self._new_net()
        else:
            assert self.opt is not None
            self.net.train()
            self.net.requires_grad_(True)
            train(self.net, self.opt)
        self.calls += 1
        assert self.net is not None
        self.net.train()
        self.net.requires_grad_(False)
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, **self._net_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))
        self._restore_net(state)
