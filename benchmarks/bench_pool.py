"""The ConvNet's 2x2 average pool on a CPU: PyTorch's ``avg_pool2d`` against the
toolkit's ``AvgPool2x2`` path, alone and in one training step of an evaluation network.

    python benchmarks/bench_pool.py                    # width 128, 100 images, all threads
    python benchmarks/bench_pool.py --threads 1 --json

Part 1 times forward + backward of the pool on each block's activation shape of the
Fashion-MNIST ConvNet (32x32, 16x16, 8x8 after the first conv's padding). Part 2 times one
SGD step (forward, cross-entropy, backward) of ConvNet-``width`` on ``--images`` 28x28
images, the evaluation protocol's step at IPC 10, with the two pools in the same process,
interleaved, the same weights; it also reports how far the two steps' weight gradients
are apart (float rounding of the forward sums only).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.backbones.pooling import AvgPool2x2
from mim4dd_kit.core.heap import keep_freed_memory


def _median_ms(fn, reps: int, rounds: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(times)


def pool_layers(width: int, images: int, reps: int) -> list[dict]:
    rows = []
    for side in (32, 16, 8):
        x = torch.randn(images, width, side, side, requires_grad=True)
        g = torch.randn(images, width, side // 2, side // 2)
        for name, pool in (("avg_pool2d", nn.AvgPool2d(2, 2)), ("AvgPool2x2", AvgPool2x2())):
            ms = _median_ms(lambda pool=pool, x=x, g=g: torch.autograd.grad(pool(x), x, g), reps)
            rows.append({"part": "pool", "shape": list(x.shape), "pool": name,
                         "forward_backward_ms": ms})
    return rows


def training_step(width: int, images: int, reps: int) -> list[dict]:
    torch.manual_seed(0)
    params = ConvNet.Params(width=width, depth=3, norm="instance")
    fast = ConvNet(params, channels=1, num_classes=10, image_size=(28, 28))
    plain = copy.deepcopy(fast)
    for block in plain.blocks:
        block[-1] = nn.AvgPool2d(2, 2)
    x = torch.randn(images, 1, 28, 28)
    y = torch.arange(images) % 10

    def grads(net: nn.Module) -> list[torch.Tensor]:
        return list(torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters())))

    pairs = zip(grads(fast), grads(plain), strict=True)
    diff = max(float((a - b).norm() / b.norm()) for a, b in pairs
               if b.norm() > 1e-6)  # conv biases before instance norm get ~0 gradient
    times: dict[str, list[float]] = {"avg_pool2d": [], "AvgPool2x2": []}
    for _ in range(3):  # interleaved
        for name, net in (("avg_pool2d", plain), ("AvgPool2x2", fast)):
            times[name].append(_median_ms(lambda net=net: grads(net), reps, rounds=1))
    return [{"part": "step", "width": width, "images": images, "pool": name,
             "step_ms": statistics.median(ts), "max_relative_gradient_difference": diff}
            for name, ts in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory(torch.device("cpu"))  # as every CPU run of the toolkit does
    rows = pool_layers(args.width, args.images, args.reps)
    rows += training_step(args.width, args.images, args.reps)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
        return
    print(f"threads {torch.get_num_threads()}")
    for r in rows:
        if r["part"] == "pool":
            print(f"pool {r['shape']} {r['pool']:>10}: {r['forward_backward_ms']:7.2f} ms")
        else:
            print(f"step width {r['width']} x {r['images']} {r['pool']:>10}: {r['step_ms']:7.1f} ms"
                  f"  (gradients apart by {r['max_relative_gradient_difference']:.1e})")


if __name__ == "__main__":
    main()
