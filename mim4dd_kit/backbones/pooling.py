"""The ConvNet's 2x2, stride-2 average pool, with a faster CPU path.

On a CPU, PyTorch's ``avg_pool2d`` kernels for NCHW tensors walk the window element by
element: on the Fashion-MNIST evaluation network (100 images, width 128, 32x32 after the
first conv) its forward and backward took a fifth of a training step. The same numbers
come from two strided additions (rows, then columns) and, backwards, from two broadcast
copies of a quarter of the output gradient (each value twice along its row, then each row
twice). :class:`AvgPool2x2` takes that path on CPU tensors in NCHW layout with even height
and width, and ``nn.AvgPool2d``'s otherwise (CUDA, channels-last tensors, odd sizes,
inside ``torch.compile``, which fuses the pool itself). The gradient is the same to the bit
(a quarter of the output gradient in each window); the forward sums the four values as
(a + b) + (c + d) instead of in one run, a difference of at most one rounding step.
docs/performance.md has the measurements (``benchmarks/bench_pool.py``).

The function supports double backward (DC's gradient matching, BPTT's and MTT's unrolls
differentiate through a network's backward), forward-mode derivatives and ``torch.func``
transforms (``vmap``, ``grad``, ``jvp``); DSA takes per-class gradients through them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _AvgPool2x2(torch.autograd.Function):
    """2x2 mean over non-overlapping windows of the last two dimensions (both even)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        rows = x[..., 0::2, :] + x[..., 1::2, :]
        return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # nothing to keep: the map is linear
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # two copies, each with a contiguous inner run: columns doubled into (..., h, 2w),
        # then each row doubled. One copy into (..., h, 2, w, 2) has an inner run of 2
        # elements and is several times slower on a CPU (docs/performance.md).
        *lead, h, w = grad.shape
        cols = (grad * 0.25).unsqueeze(-1).expand(*lead, h, w, 2).reshape(*lead, h, 1, 2 * w)
        return cols.expand(*lead, h, 2, 2 * w).reshape(*lead, 2 * h, 2 * w)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:  # forward mode: the map is linear
        return _AvgPool2x2.forward(tangent)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(kernel_size=2, stride=2)`` that takes the faster CPU path where it
    applies (see the module docstring); an ``nn.AvgPool2d``, so layer inspection sees a
    pool."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if _fast_path_applies(x):
            return _AvgPool2x2.apply(x)
        return super().forward(x)


def _fast_path_applies(x: Tensor) -> bool:
    """A CPU NCHW (or CHW) tensor with non-empty maps of even height and width, outside
    ``torch.compile``."""
    return (x.device.type == "cpu" and x.dim() in (3, 4) and x.numel() > 0
            and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 and x.is_contiguous()
            and not torch.compiler.is_compiling())
