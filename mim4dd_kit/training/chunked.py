"""Gradient-free forward passes over large real batches, in cache-sized chunks.

Most methods push a few thousand real images through a network only to read their
features or logits (DM's real class means and the real features it hands a regularizer,
the accuracy CAFE's network watcher reads, test-set accuracy). On a CPU that pass is bound
by memory traffic, not arithmetic: the first block's activations for 2,560 Fashion-MNIST
images at width 128 are 1.3 GB, and the normalisation, activation and pooling each stream
them through main memory once. Cut
into chunks whose activations fit in the last-level cache, the same pass runs ~3x faster
on a 2-core CPU (docs/performance.md). On CUDA the whole batch goes at once.

On a CPU the chunks also go through a channels-last (NHWC) copy of the network: oneDNN's
NHWC kernels run the 1-channel first convolution ~20x and 2x2 average pooling ~12x
faster than NCHW, with forward values equal up to float rounding. (Passes with gradients
stay NCHW, where the GroupNorm backward is accurate; see ``mim4dd_kit/config/performance.py``.)

Chunking is exact only for networks that treat samples independently. A BatchNorm layer
in training mode normalises with statistics of the whole batch, so such networks are
never chunked.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .networks import couples_samples

#: activation bytes per chunk on a CPU (per-core L2 plus a share of L3 on current parts)
CPU_CHUNK_BYTES = 8 * 2**20


def chunk_size(net: nn.Module, x: Tensor, budget: int = CPU_CHUNK_BYTES) -> int:
    """Images per chunk for a gradient-free pass of ``x`` through ``net``.

    The whole batch on non-CPU devices and for sample-coupling networks; otherwise as many
    images as keep the largest activation (a block's output before its 2x2 pooling, i.e.
    4x the block output the backbone reports) within ``budget`` bytes.
    """
    n = len(x)
    if x.device.type != "cpu" or budget <= 0 or couples_samples(net) or n == 0:
        return max(n, 1)
    # Backbone.feature_shapes (None: unknown); a network outside that contract may lack it
    shapes = net.feature_shapes() if hasattr(net, "feature_shapes") else None
    if shapes:
        largest = max(math.prod(s) for s in shapes) * 4
    else:
        largest = x[0].numel() * 64  # unknown layout: assume a wide first block
    per_image = largest * x.element_size()
    return max(1, min(n, budget // max(per_image, 1)))


def _fast_twin(net: nn.Module) -> nn.Module:
    """A channels-last copy of a network with 2-D convolutions (same weights), else ``net``."""
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        return net
    return copy.deepcopy(net).to(memory_format=torch.channels_last)


@torch.no_grad()
def features(
    net: nn.Module, x: Tensor, chunk: int | None = None, budget: int = CPU_CHUNK_BYTES
) -> list[Tensor]:
    """``net.features(x)`` without autograd, computed chunk by chunk."""
    chunk = chunk or chunk_size(net, x, budget)
    if chunk >= len(x):
        return net.features(x)
    net = _fast_twin(net)
    out: list[Tensor] = []
    for i in range(0, len(x), chunk):
        feats = net.features(x[i:i + chunk])
        if not out:  # one buffer per block, filled while each chunk is still in cache
            out = [f.new_empty((len(x), *f.shape[1:])) for f in feats]
        for buf, f in zip(out, feats, strict=True):
            buf[i:i + len(f)] = f
    return out


@torch.no_grad()
def class_sums(
    net: nn.Module, x: Tensor, labels: Tensor, num_classes: int, layer: int = -1,
    chunk: int | None = None, budget: int = CPU_CHUNK_BYTES,
) -> Tensor:
    """Per-class sums ``(C, D)`` of one block's flattened features, chunk by chunk.

    Nothing but the running sums is kept, so the real batch's features are never
    concatenated.
    """
    chunk = chunk or chunk_size(net, x, budget)
    if chunk < len(x):
        net = _fast_twin(net)
    sums: Tensor | None = None
    for i in range(0, len(x), chunk):
        f = net.features(x[i:i + chunk])[layer].flatten(1)
        if sums is None:
            sums = f.new_zeros(num_classes, f.shape[1])
        sums.index_add_(0, labels[i:i + chunk], f)
    if sums is None:
        raise ValueError("class_sums needs at least one image")
    return sums


@torch.no_grad()
def logits(
    net: nn.Module, x: Tensor, chunk: int | None = None, budget: int = CPU_CHUNK_BYTES
) -> Tensor:
    """``net(x)`` without autograd, computed chunk by chunk."""
    chunk = chunk or chunk_size(net, x, budget)
    if chunk < len(x):
        net = _fast_twin(net)
    return torch.cat([net(x[i:i + chunk]) for i in range(0, len(x), chunk)])


class ChunkedPasses:
    """These passes as the :class:`~mim4dd_kit.api.NoGradPasses` a run hands its plugins
    (``ctx.nograd_features`` ...), each chunked within ``budget`` bytes."""

    def features(self, net: nn.Module, x: Tensor, budget: int) -> list[Tensor]:
        return features(net, x, budget=budget)

    def class_sums(self, net: nn.Module, x: Tensor, labels: Tensor, num_classes: int,
                   layer: int, budget: int) -> Tensor:
        return class_sums(net, x, labels, num_classes, layer, budget=budget)

    def logits(self, net: nn.Module, x: Tensor, budget: int) -> Tensor:
        return logits(net, x, budget=budget)
