"""Shared machinery of the gradient-matching losses (``dc``, ``dsa``, ``dream``); the
persistent network that ``dc`` and ``cafe`` train on the synthetic set between image updates
is :mod:`mim4dd_kit.training.networks`.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..api import Backbone
from ..training.chunked import chunk_size
from ..training.unroll import FeaturesAndLogits
from .params import Distance

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


#: activation bytes of one vmapped group of classes on a CPU: half of glibc's largest mmap
#: threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB), so that a group's
#: largest buffer (a block's pre-pooling activation) and vmap's temporaries stay below it
CPU_CLASS_GROUP_BYTES = 16 * 2**20


def class_chunk(net: Backbone, x: Tensor, budget: int = CPU_CLASS_GROUP_BYTES) -> int | None:
    """Classes per vmapped group for :func:`class_gradients` of a real batch ``x``
    (C, n, ...): None (all classes at once) off the CPU or when all fit in ``budget``.

    On a CPU all C classes at once make every activation C times one class's (168 MB per
    activation for 10 classes of 64 Fashion-MNIST images at width 64). glibc serves each
    such buffer by a fresh ``mmap`` that the kernel zero-fills page by page on first
    touch and unmaps on free, at every call: on the ``dsa`` recipe (IPC 1, width 64, 64
    real images per class) the real side spent 2x its arithmetic in system time
    (docs/performance.md). Groups whose largest activation stays within ``budget`` are
    served from the heap and reused. The values are the same: vmap's ``chunk_size`` runs
    the same per-class computation group by group.
    """
    c, n = x.shape[0], x.shape[1]
    images = chunk_size(net, x.flatten(0, 1), budget)  # all of them off the CPU
    if images >= c * n:
        return None
    return max(1, images // max(n, 1))


def class_gradients(
    net: Backbone, x: Tensor, y: Tensor, chunk: int | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """Gradients of ``CE(net(x[c]), y[c])`` w.r.t. every parameter, for all classes at once.

    ``x`` (C, n, ch, H, W), ``y`` (C, n). Returns the gradients (one tensor (C, *param) per
    parameter, in ``net.parameters()`` order) and the block features of the same forward
    (one tensor (C, n, ...) per block). The network's parameters are treated as constants
    of the outer graph: if ``x`` carries a graph (synthetic images), gradients and features
    are differentiable w.r.t. it (torch.func composes with regular autograd); otherwise
    they carry no graph. Buffers are read, never updated (BatchNorm must be in eval mode).
    ``chunk``: classes per vmapped group (None: all at once; see :func:`class_chunk`);
    the result does not depend on it.
    """
    model = FeaturesAndLogits(net)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, Tensor], xc: Tensor, yc: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats, logits = functional_call(model, (p, buffers), (xc,))
        return F.cross_entropy(logits, yc), feats

    grads, feats = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0),
                        chunk_size=chunk)(params, x, y)
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
