"""DREAM: Efficient Dataset Distillation by Representative Matching (Liu, Gu, Wang, Zhu,
Jiang & You, ICCV 2023), the loop of its reference code (Yanqing0327/DREAM ``condense.py``,
built on IDC, Kim et al., ICML 2022).

The reference loop (``condense.py:600-657``), with one engine iteration here = one inner
iteration ``ot`` there:

    for it in range(niter):                       # outer: a fresh network (it > 0)
        clamp the stored images to [0, 1]
        for ot in range(inner_loop):               # inner: one engine iteration
            for c in classes:                      # one image step per class
                if ot % interval == 0: real_c <- k-means representatives of class c
                L_c = D(grad CE(net, A(real_c)), grad CE(net, A(decode(syn_c))))
                SGD step of the images on L_c
            train net on n_data real images (SGD, cutmix)

- ``image_steps`` (the engine hook) = the number of classes: each ``compute`` call is the
  step of one class, so the image optimiser's momentum runs across the per-class steps
  exactly as in the reference (one SGD over the whole set, zero gradient for the other
  classes).
- ``syn`` handed to ``compute`` is the decoded set (``synthetic.formation``; the engine
  decodes); at most ``batch_syn_max`` decoded images of the class are matched.
- D sums ``(g_r - g_s)^2`` (``mse``) or ``|g_r - g_s|`` (``l1``) over the convolution
  weights only; biases, norm affines and the classifier are skipped (reference
  ``matchloss``, ``--bias False --fc False``).
- Pixel space: the reference holds images in [0, 1] and normalises inside the network's
  input; the toolkit holds them normalised, x_n = (x - m) / s. An SGD step of lr on x
  equals a step of lr on x_n whose gradient is scaled by 1 / s^2 per channel (momentum is
  linear), which ``pixel_step`` applies, so ``synthetic.lr`` is the reference's
  ``lr_img``; clamping x to [0, 1] is clamping x_n to [-m / s, (1 - m) / s].
- The network is trained on real data between inner iterations (``train_epoch``: batches
  of ``net_batch`` until ``net_data`` images, cutmix with probability ``mix_p``, SGD lr
  0.01, momentum 0.9, weight decay 5e-4) and re-initialised every ``inner_loop`` engine
  iterations.
- ``init_images`` (engine hook) writes k-means representatives of every class into the
  stored set (factor f: ``ipc * f^2`` of them, shrunk by nearest-neighbour resizing into
  the f x f tiles of each stored image), as the reference's ``--init kmean`` /
  ``--init mix --f2_init kmean``; ``after_step`` clamps at the end of each outer iteration.

See docs/components/dream.md for every point with the reference's file:line.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Backbone, DDLoss, LossOutput, RunContext, SyntheticState
from ..core.errors import DataError
from .dc import BN_PER_CLASS
from .gradient_matching import class_gradients, freeze_batchnorm, has_batchnorm
from .kmeans import class_pool, representatives
from .params import DREAMParams, Metric


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def metric_for(dataset: str, metric: Metric) -> Literal["mse", "l1"]:
    """``auto``: L1 on (Fashion-)MNIST, MSE otherwise (reference ``misc/reproduce.py``)."""
    if metric != "auto":
        return metric
    return "l1" if "mnist" in dataset.lower() else "mse"


def conv_distance(
    g_real: list[Tensor], g_syn: list[Tensor], metric: str, *, bias: bool = False,
    fc: bool = False,
) -> Tensor:
    """Per-class (C,) distance between per-class gradients (each (C, *param)).

    Parameters with one dimension (biases, norm affines) count only with ``bias``, with two
    (linear weights) only with ``fc``; the rest (convolution weights) always (reference
    ``matchloss``). ``mse``: sum of squared differences; ``l1``: sum of absolute ones.
    """
    c = g_real[0].shape[0]
    total = g_real[0].new_zeros(c)
    for gr, gs in zip(g_real, g_syn, strict=True):
        dims = gr.dim() - 1
        if (dims == 1 and not bias) or (dims == 2 and not fc):
            continue
        diff = (gs - gr).reshape(c, -1)
        total = total + (diff.pow(2) if metric == "mse" else diff.abs()).sum(-1)
    return total


def cutmix_loss(
    net: torch.nn.Module, x: Tensor, y: Tensor, beta: float
) -> Tensor:
    """CutMix of a batch with a permutation of itself (reference ``train_epoch`` with
    ``rand_bbox``): one box for the batch, labels mixed by the kept area."""
    lam = float(torch.distributions.Beta(beta, beta).sample())
    perm = torch.randperm(len(y), device=y.device)
    h, w = x.shape[2], x.shape[3]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    ratio = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    out = net(x)
    return F.cross_entropy(out, y) * ratio + F.cross_entropy(out, y[perm]) * (1.0 - ratio)


def tile_encode(images: Tensor, factor: int) -> Tensor:
    """(f^2, M, C, H, W) images -> (M, C, H, W): image k of each group, shrunk by nearest
    resizing, fills tile k (row-major) of the output; tiles are ``H // f`` (+1 for the first
    ``H % f`` rows/columns) wide (reference ``condense.py:552-568``)."""
    k2, m, c, h, w = images.shape
    out = images.new_empty(m, c, h, w)
    sh, rh = divmod(h, factor)
    sw, rw = divmod(w, factor)
    k, top = 0, 0
    for i in range(factor):  # over the f x f tiles, never over samples
        th = sh + 1 if i < rh else sh
        left = 0
        for j in range(factor):
            tw = sw + 1 if j < rw else sw
            out[:, :, top:top + th, left:left + tw] = F.interpolate(images[k], size=(th, tw))
            left += tw
            k += 1
        top += th
    return out


class DREAM(DDLoss):
    """Representative matching on IDC's loop: per-class gradient matching of (decoded)
    synthetic images against k-means representatives, network trained on real data."""

    learns_lr: ClassVar[bool] = False
    shardable: ClassVar[bool] = False
    method: ClassVar[str] = "dream"

    Params = DREAMParams

    def __init__(self, params: DREAM.Params, *, ctx: RunContext):
        self.params, self.ctx = params, ctx
        if params.augment and ctx.augment is None:
            raise ValueError(
                "dream with augment: true needs an augmentation; set the recipe key "
                "`augmentation` (e.g. `augmentation: {name: dsa, strategy: color_crop_cutout}`)"
                " or the dd_loss key `augment: false`"
            )
        info = ctx.data.info
        self.num_classes = info.num_classes
        self.metric = metric_for(info.name, params.metric)
        mean = torch.tensor(info.mean, device=ctx.device).reshape(1, -1, 1, 1)
        std = torch.tensor(info.std, device=ctx.device).reshape(1, -1, 1, 1)
        self.mean, self.std = mean, std
        self.lo, self.hi = -mean / std, (1 - mean) / std  # pixel [0, 1] in normalised space
        self.calls = 0
        self.net: Backbone | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.selection: Tensor | None = None  # (C, k) training-set indices
        self._real_feats: list[Tensor] | None = None

    # -- engine hooks -----------------------------------------------------------------------
    @property
    def image_steps(self) -> int:
        """One image step per class per iteration (reference ``condense.py:619-644``)."""
        return self.num_classes

    def init_images(self, syn: SyntheticState) -> None:
        """Build the first network; with ``init: kmeans`` fill the stored set with k-means
        representatives of every class under it; clamp (reference ``condense.py:517-615``)."""
        self._new_net()
        p, ctx = self.params, self.ctx
        if p.init == "kmeans":
            f, ipc, c = ctx.formation, ctx.ipc, self.num_classes
            expected = torch.arange(c, device=syn.labels.device).repeat_interleave(ipc)
            if not torch.equal(syn.labels, expected):
                raise ValueError("dream init kmeans needs the stored set grouped by class")
            assert self.net is not None
            idx = representatives(self.net, ctx.data.train_images, class_pool(ctx.data),
                                  ipc * f * f, p.kmeans_iters, prepare=self._embed_input)
            if idx.shape[1] < ipc * f * f:
                raise DataError(
                    f"dd_loss dream (init: kmeans) needs {ipc * f * f} real images per class "
                    f"(synthetic.ipc {ipc} x synthetic.formation {f}^2) but a class of "
                    f"{ctx.data.info.name!r} has {idx.shape[1]}; lower synthetic.ipc or "
                    "synthetic.formation, or set dd_loss.init: engine"
                )
            chosen = ctx.data.train_images[idx]  # (C, ipc f^2, ch, H, W)
            groups = chosen.reshape(c, f * f, ipc, *chosen.shape[2:]).transpose(0, 1)
            stored = tile_encode(groups.reshape(f * f, c * ipc, *chosen.shape[2:]), f)
            syn.images.copy_(stored)
        if p.clamp:
            self._clamp(syn)

    def after_step(self, syn: SyntheticState) -> None:
        """Clamp after the last step of every ``inner_loop`` iterations (the reference
        clamps at the start of each outer iteration, ``condense.py:615``)."""
        if self.params.clamp and self.calls % (self.num_classes * self.params.inner_loop) == 0:
            self._clamp(syn)

    # -- pieces -----------------------------------------------------------------------------
    def _clamp(self, syn: SyntheticState) -> None:
        syn.images.copy_(torch.maximum(torch.minimum(syn.images, self.hi), self.lo))

    def _embed_input(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean if self.params.kmeans_input == "pixel" else x

    def _new_net(self) -> None:
        p = self.params
        self.net = self.ctx.make_backbone().to(self.ctx.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=p.net_lr, momentum=p.net_momentum,
                                   weight_decay=p.net_weight_decay)

    def _train_on_real(self) -> None:
        """Reference ``train_epoch(..., n_data)``: random real batches until ``net_data``
        images, per-sample augmentation without gradient, cutmix with probability mix_p."""
        p, ctx = self.params, self.ctx
        net, opt = self.net, self.opt
        assert net is not None and opt is not None
        data = ctx.data
        batch = p.net_batch or ctx.batch_real
        net.train()
        net.requires_grad_(True)
        seen = 0
        while seen < p.net_data:
            idx = torch.randperm(len(data.train_labels), device=data.train_labels.device)[:batch]
            x, y = data.train_images[idx], data.train_labels[idx]
            if p.augment and ctx.augment is not None:
                with torch.no_grad():
                    x = ctx.augment(x)
            if float(torch.rand(())) < p.mix_p:
                loss = cutmix_loss(net, x, y, p.cutmix_beta)
            else:
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)

    def _refresh(self) -> None:
        p = self.params
        assert self.net is not None
        self.selection = representatives(
            self.net, self.ctx.data.train_images, class_pool(self.ctx.data),
            p.clusters or self.ctx.batch_real, p.kmeans_iters, prepare=self._embed_input)

    def _real_features(self) -> tuple[list[Tensor], Tensor]:
        """Features of every class's representatives under the current network (no graph),
        computed once per inner iteration (the network is fixed during it)."""
        assert self.selection is not None and self.net is not None
        if self._real_feats is None:
            with torch.no_grad():
                self._real_feats = self.net.features(
                    self.ctx.data.train_images[self.selection.reshape(-1)])
        k = self.selection.shape[1]
        labels = torch.arange(self.num_classes, device=self.ctx.device).repeat_interleave(k)
        return self._real_feats, labels

    # -- the loss ---------------------------------------------------------------------------
    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        p, ctx = self.params, self.ctx
        c = self.calls % self.num_classes
        inner = self.calls // self.num_classes
        ot = inner % p.inner_loop
        logs: dict[str, float] = {}
        if c == 0:  # a new inner iteration: network, representatives
            if self.net is None or (inner > 0 and ot == 0):
                self._new_net()
            elif inner > 0 and p.net_data > 0:
                self._train_on_real()
            assert self.net is not None
            self.net.train()
            self.net.requires_grad_(False)
            if has_batchnorm(self.net):
                freeze_batchnorm(self.net, ctx.data.sample_per_class(BN_PER_CLASS)[0])
            refresh = self.selection is None or ot % p.interval == 0
            if refresh:
                self._refresh()
            logs["dream_refresh"] = float(refresh)
            self._real_feats = None
        self.calls += 1
        net, sel = self.net, self.selection
        assert net is not None and sel is not None
        real = ctx.data.train_images[sel[c]]
        rows = (syn.labels == c).nonzero().squeeze(1)
        if len(rows) > p.batch_syn_max:
            rows = rows[torch.randperm(len(rows), device=rows.device)[:p.batch_syn_max]]
        syn_x = syn.images[rows]
        if p.pixel_step:
            syn_x = _ScaleGrad.apply(syn_x, self.std.pow(-2))
        if p.augment:
            assert ctx.augment is not None
            real_g = torch.full((len(real),), c, device=real.device)
            syn_g = torch.full((len(rows),), c, device=real.device)
            real, syn_x = ctx.augment.siamese(real, real_g, syn_x, syn_g)
        real_y = torch.full((1, len(real)), c, device=real.device)
        syn_y = torch.full((1, len(rows)), c, device=real.device)
        with torch.no_grad():
            g_real, _ = class_gradients(net, real[None], real_y)
        g_syn, f_syn = class_gradients(net, syn_x[None], syn_y)
        loss = conv_distance(g_real, g_syn, self.metric, bias=p.match_bias, fc=p.match_fc)[0]
        if not want_features:
            return LossOutput(loss, logs=logs)
        real_feats, real_labels = self._real_features()
        return LossOutput(loss, [f[0] for f in f_syn], syn_y[0], real_feats, real_labels, logs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "net": None if self.net is None else self.net.state_dict(),
            "opt": None if self.opt is None else self.opt.state_dict(),
            "selection": self.selection,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))
        self._real_feats = None
        if state.get("net") is not None:
            self._new_net()  # consumes RNG, but the engine restores the RNG state afterwards
            assert self.net is not None and self.opt is not None
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
        sel = state.get("selection")
        self.selection = None if sel is None else sel.to(self.ctx.device)
