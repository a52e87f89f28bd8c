"""Where DM's time goes: the gradient-free forward of a real batch, three ways.

Times ``net.features`` over the real batch of one DM iteration at Fashion-MNIST sizes
(ConvNet width 128, instance norm, 10 classes x 256 images) in one pass, in cache-sized
chunks (NCHW), and in chunks through the channels-last twin that ``mim4dd_kit.training.chunked``
uses on a CPU (one after another, and on the one-thread workers as the toolkit runs them,
eagerly and compiled),
and the convolutions of those chunks alone (the floor of the pass); then profiles one full
``dm`` iteration by operator.

    python benchmarks/bench_real_forward.py
    python benchmarks/bench_real_forward.py --images 1280 --width 64 --no-profile
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    import torch

    from mim4dd_kit.backbones.convnet import ConvNet
    from mim4dd_kit.training import chunked, compiled

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2560)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ConvNet(ConvNet.Params(width=args.width), channels=1, num_classes=10,
                  image_size=(28, 28)).train()
    x = torch.randn(args.images, 1, 28, 28)
    chunk = chunked.chunk_size(net, x)
    twin = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def run(model, size):
        with torch.no_grad():
            for i in range(0, len(x), size):
                model.features(x[i:i + size])

    # the convolutions alone, each on the input it sees in a chunk's forward pass
    convs = [blk[0] for blk in twin.blocks]
    with torch.no_grad():
        inputs, h = [], x[:chunk].contiguous(memory_format=torch.channels_last)
        for blk in twin.blocks:
            inputs.append(h)
            h = blk(h)

    def convs_only(i, j):
        for conv, a in zip(convs, inputs, strict=True):
            conv(a[:j - i])

    def on_workers(fn):
        for _ in chunked.map_chunks(fn, len(x), chunk):
            pass

    rows = [("whole batch, NCHW", _time(lambda: run(net, len(x)), args.repeat)),
            (f"chunks of {chunk}, NCHW", _time(lambda: run(net, chunk), args.repeat)),
            (f"chunks of {chunk}, channels-last twin, one after another",
             _time(lambda: run(twin, chunk), args.repeat)),
            (f"chunks of {chunk}, channels-last twin, on {args.threads} one-thread workers "
             "(toolkit)",
             _time(lambda: on_workers(lambda i, j: twin.features(x[i:j])), args.repeat)),
            (f"chunks of {chunk}, channels-last twin, on {args.threads} one-thread workers, "
             "compiled (`performance.compile_passes`)",
             _time(lambda: on_workers(lambda i, j: compiled.PASSES.features(twin, x[i:j])),
                   args.repeat)),
            ("the same chunks' convolutions alone, on the workers",
             _time(lambda: on_workers(convs_only), args.repeat))]
    print(f"real forward of {args.images} images, ConvNet width {args.width}, "
          f"{args.threads} threads\n")
    print("| pass | seconds |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} |")
    if args.no_profile:
        return
    from torch.profiler import ProfilerActivity, profile

    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.run.engine import Run

    recipe = validate_recipe({
        "name": "profile", "device": "cpu", "dataset": {"name": "fashion_mnist"},
        "synthetic": {"ipc": 10, "iterations": 1, "batch_real": args.images // 10},
        "backbone": {"name": "convnet", "width": args.width}, "dd_loss": {"name": "dm"},
        "augmentation": {"name": "dsa"}, "evaluators": []})
    r = Run(recipe, Path("/tmp/mdk-profile"), torch.device("cpu"), default_registry())
    r.setup()
    r.step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2):
            r.step(i + 1)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("\none dm iteration by operator (self time, mean of 2 iterations)\n")
    print("| operator | ms | share |\n|---|---|---|")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"| {e.key} | {e.self_cpu_time_total / 2e3:.0f} | "
              f"{100 * e.self_cpu_time_total / total:.0f}% |")


if __name__ == "__main__":
    main()
