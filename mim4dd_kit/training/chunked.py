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

On a CPU with several threads, the chunks are spread over that many worker threads, each
running its chunks on one thread, rather than every small kernel being split across all
threads. A split kernel ends at a barrier where each thread waits for the others; on a
shared node, where another job can take a thread's core at any moment, those waits
dominate (docs/performance.md, "Running on a shared node": 2.25x slower than the
baseline formulation at four busy processes per core). Whole chunks on single threads
never wait for each other, and every chunk's arithmetic is the same however many workers
run: the results do not depend on the thread count or the load. Partial results are
combined in chunk order.

Chunking is exact only for networks that treat samples independently. A BatchNorm layer
in training mode normalises with statistics of the whole batch, so such networks are
never chunked.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor, nn

from . import compiled as compiled_mod
from .networks import couples_samples

#: activation bytes per chunk on a CPU (per-core L2 plus a share of L3 on current parts)
CPU_CHUNK_BYTES = 8 * 2**20

T = TypeVar("T")
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def one_thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` worker threads, each running torch on one thread
    (under OpenMP the count is per OS thread: the caller's stays as it is). Shared by the
    chunked passes and the evaluation's networks (:mod:`.batched`); rebuilt after a fork
    or for another size. Work submitted from inside a worker must not wait on this pool
    (a worker has one torch thread, so the chunked passes run inline there)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), workers):
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(
                workers, thread_name_prefix="mdk-workers",
                initializer=torch.set_num_threads, initargs=(1,)))
        return _pool[2]


def map_chunks(fn: Callable[[int, int], T], n: int, chunk: int,
               workers: int | None = None, serial_first: bool = False) -> Iterator[T]:
    """``fn(i, j)`` for the chunks ``[i, j)`` of ``range(n)``, results in chunk order.

    Each call runs on one thread without autograd, under the caller's CPU autocast
    state; ``workers`` (default: torch's thread count) run them concurrently. With one
    thread the calls run in the caller's thread. ``serial_first``: the first chunk, and
    the last one where its size differs, run alone before the others (one worker, one
    thread as always), so that work done once per input shape (compiling) is not raced.
    """
    bounds = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    workers = workers or torch.get_num_threads()
    if workers <= 1 and torch.get_num_threads() == 1:
        for i, j in bounds:
            with torch.no_grad():
                result = fn(i, j)
            yield result
        return
    cast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")

    def call(bound: tuple[int, int]) -> T:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=cast):
            return fn(*bound)

    pool = one_thread_pool(max(workers, 1))
    if not serial_first or len(bounds) < 2:
        yield from pool.map(call, bounds)
        return
    first, last = bounds[0], bounds[-1]
    ahead = {first: pool.submit(call, first).result()}
    if last[1] - last[0] != first[1] - first[0]:
        ahead[last] = pool.submit(call, last).result()
    rest = pool.map(call, [b for b in bounds if b not in ahead])
    for b in bounds:
        yield ahead[b] if b in ahead else next(rest)


def _features_of(net: nn.Module, compiled: bool) -> Callable[[Tensor], list[Tensor]]:
    return (lambda x: compiled_mod.PASSES.features(net, x)) if compiled else net.features


def _forward_of(net: nn.Module, compiled: bool) -> Callable[[Tensor], Tensor]:
    return (lambda x: compiled_mod.PASSES.forward(net, x)) if compiled else net


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


#: a row-wise reduction of a batch's block features (e.g. per-channel means)
FeatureView = Callable[[list[Tensor]], list[Tensor]]


@torch.no_grad()
def features(
    net: nn.Module, x: Tensor, chunk: int | None = None, budget: int = CPU_CHUNK_BYTES,
    view: FeatureView | None = None, compiled: bool = False,
) -> list[Tensor]:
    """``net.features(x)`` without autograd, computed chunk by chunk; with ``view``,
    ``view(net.features(x))`` with the view taken of each chunk's features while they are
    in cache (``view`` must treat rows independently), so the whole batch's block
    features are never kept. ``compiled``: through :data:`.compiled.PASSES` (chunked batches
    only)."""
    chunk = chunk or chunk_size(net, x, budget)
    if chunk >= len(x):
        return net.features(x) if view is None else view(net.features(x))
    net = _fast_twin(net)
    feats = _features_of(net, compiled)

    def of(i: int, j: int) -> list[Tensor]:
        f = feats(x[i:j])
        return f if view is None else [v.contiguous() for v in view(f)]

    first = next(map_chunks(of, chunk, chunk))
    # one buffer per output, each chunk's rows written by its worker while in cache
    out = [f.new_empty((len(x), *f.shape[1:])) for f in first]

    def fill(i: int, j: int) -> None:
        for buf, f in zip(out, first if i == 0 else of(i, j), strict=True):
            buf[i:j] = f

    for _ in map_chunks(fill, len(x), chunk, serial_first=compiled):
        pass
    return out


@torch.no_grad()
def class_sums(
    net: nn.Module, x: Tensor, labels: Tensor, num_classes: int, layer: int = -1,
    chunk: int | None = None, budget: int = CPU_CHUNK_BYTES, compiled: bool = False,
) -> Tensor:
    """Per-class sums ``(C, D)`` of one block's flattened features, chunk by chunk.

    Nothing but the running sums is kept, so the real batch's features are never
    concatenated. ``compiled``: through :data:`.compiled.PASSES` (chunked batches only).
    """
    if len(x) == 0:
        raise ValueError("class_sums needs at least one image")
    chunk = chunk or chunk_size(net, x, budget)
    compiled = compiled and chunk < len(x)
    if chunk < len(x):
        net = _fast_twin(net)
    feats = _features_of(net, compiled)

    def partial(i: int, j: int) -> Tensor:
        f = feats(x[i:j])[layer].flatten(1)
        return f.new_zeros(num_classes, f.shape[1]).index_add_(0, labels[i:j], f)

    parts = map_chunks(partial, len(x), chunk, serial_first=compiled)
    sums = next(parts)
    for p in parts:  # chunk order: the same sums for any number of workers
        sums += p
    return sums


@torch.no_grad()
def logits(
    net: nn.Module, x: Tensor, chunk: int | None = None, budget: int = CPU_CHUNK_BYTES,
    compiled: bool = False,
) -> Tensor:
    """``net(x)`` without autograd, computed chunk by chunk. ``compiled``: through
    :data:`.compiled.PASSES` (chunked batches only)."""
    chunk = chunk or chunk_size(net, x, budget)
    if chunk >= len(x):
        return net(x)
    forward = _forward_of(_fast_twin(net), compiled)
    return torch.cat(list(map_chunks(lambda i, j: forward(x[i:j]), len(x), chunk,
                                     serial_first=compiled)))


class ChunkedPasses:
    """These passes as the :class:`~mim4dd_kit.api.NoGradPasses` a run hands its plugins
    (``ctx.nograd_features`` ...), each chunked within ``budget`` bytes, compiled when
    ``compiled`` (the recipe's ``performance.compile_passes``)."""

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled

    def features(self, net: nn.Module, x: Tensor, budget: int,
                 view: FeatureView | None = None) -> list[Tensor]:
        return features(net, x, budget=budget, view=view, compiled=self.compiled)

    def class_sums(self, net: nn.Module, x: Tensor, labels: Tensor, num_classes: int,
                   layer: int, budget: int) -> Tensor:
        return class_sums(net, x, labels, num_classes, layer, budget=budget,
                          compiled=self.compiled)

    def logits(self, net: nn.Module, x: Tensor, budget: int) -> Tensor:
        return logits(net, x, budget=budget, compiled=self.compiled)
