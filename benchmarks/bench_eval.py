"""Time the evaluation protocol with its networks trained one by one and stacked.

Runs the ``train_from_scratch`` evaluator twice on the same set and seed, once with
``batched: false`` (networks one after another) and once with ``batched: true`` (all
networks stacked under ``torch.func.vmap``), and prints a Markdown table of wall time,
speed-up and the largest per-network test-accuracy difference between the two. The set
is ``--ipc`` real training images per class (the cost of an evaluation does not depend
on what the images show). Usage:

    python benchmarks/bench_eval.py                                   # FMNIST, 5 x 300 epochs
    python benchmarks/bench_eval.py --models 10 --epochs 50 --device cuda
    python benchmarks/bench_eval.py --dataset digits --models 2 --epochs 2 --width 8  # smoke

Both modes include building the networks and testing them on the full test split. A
warm-up evaluation (one network, one epoch, each mode) runs first so one-off costs
(kernel selection, vmap set-up) are not timed. ``--batch-models`` caps how many networks
the stacked mode trains at once.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--norm", default="instance")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    ap.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-models", type=int, default=None)
    ap.add_argument("--no-augment", action="store_true", help="train without DSA")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", default=["one by one", "one-thread workers",
                                                    "stacked"],
                    help="which of: 'one by one' (torch's threads), 'one-thread workers' "
                    "(networks at once, one thread each), 'stacked' (vmap)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = ap.parse_args()

    from mim4dd_kit.api import AugmentationRef, BackboneRef, EvalRequest
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.core.runtime import resolve_device
    from mim4dd_kit.evaluators.train_from_scratch import TrainFromScratch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    reg = default_registry()
    spec = {"name": args.dataset}
    if args.data_root and args.dataset == "fashion_mnist":
        spec["root"] = args.data_root
    data = reg.build("datasets", spec).load().to(device)
    images, labels = data.sample_per_class(args.ipc, torch.Generator(device=device)
                                           .manual_seed(args.seed))
    backbone = BackboneRef(name="convnet", width=args.width, depth=args.depth, norm=args.norm)
    aug = None if args.no_augment else AugmentationRef(name="dsa")
    request = EvalRequest(images, labels, None, data, device, args.seed, backbone, aug)

    def evaluate(batched: bool, models: int, epochs: int, workers: int = 1) -> dict:
        params = TrainFromScratch.Params(
            models=models, epochs=epochs, backbone=backbone, augmentation=aug,
            batched=batched, batch_models=args.batch_models, workers=workers,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        result = TrainFromScratch(params).evaluate(request, reg)
        sync(device)
        result["wall_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return result

    threads = torch.get_num_threads()
    modes = [("one by one", False, 1), (f"one-thread workers ({threads})", False, threads),
             ("stacked", True, 1)]
    modes = [m for m in modes if m[0].split(" (")[0] in args.modes or m[0] in args.modes]
    for _, batched, workers in modes:
        evaluate(batched, 2 if workers > 1 else 1, 1, workers)  # warm-up
    results = [(name, evaluate(batched, args.models, args.epochs, workers))
               for name, batched, workers in modes]
    first = results[0][1]
    rows = []
    for name, res in results:
        if name == "stacked" and not res["batched"]:
            name = f"stacked (fell back: {res['reason']})"
        rows.append({"mode": name, "networks": args.models, "seconds": res["wall_s"],
                     "speed_up": first["wall_s"] / res["wall_s"],
                     "max_acc_diff": max(abs(a - b) for a, b in zip(
                         first["accuracies"], res["accuracies"], strict=True)),
                     "accuracy_mean": res["accuracy_mean"],
                     "peak_cuda_mb": res.get("peak_cuda_mb")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| mode | networks | seconds | speed-up vs first | max abs acc diff vs first (points) "
          "| mean acc % "
          "| peak CUDA MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "-"
        print(f"| {r['mode']} | {r['networks']} | {r['seconds']:.2f} | {r['speed_up']:.2f}x "
              f"| {r['max_acc_diff']:.3f} | {r['accuracy_mean']:.2f} | {mem} |")
    print(f"\ndevice {device}, threads {torch.get_num_threads()}, {args.dataset} IPC {args.ipc}, "
          f"ConvNet width {args.width} depth {args.depth} norm {args.norm}, "
          f"{args.epochs} epochs, DSA {'off' if args.no_augment else 'on'}, "
          f"batch_models {args.batch_models or 'all'}")


if __name__ == "__main__":
    main()
