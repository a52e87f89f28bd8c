"""Time one distillation iteration and one evaluation model at Fashion-MNIST IPC 10 sizes.

Each case runs in its own process so that peak memory (max RSS, and CUDA peak allocated
where used) belongs to that case alone. Usage:

    python benchmarks/bench_iteration.py                 # all cases, a table
    python benchmarks/bench_iteration.py --json          # the same as JSON
    python benchmarks/bench_iteration.py --case dm --iters 5

Settings (the DM reference's): ConvNet width 128, depth 3, instance norm; IPC 10;
256 real images per class; DSA on. ``--batch-real`` and ``--width`` shrink them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ["dm", "dm_mim4dd", "eval_model"]


def _recipe(case: str, args) -> dict:
    data = {
        "name": f"bench_{case}",
        "seed": 0,
        "device": args.device,
        "dataset": {"name": args.dataset},
        "synthetic": {"ipc": args.ipc, "iterations": 1, "lr": 1.0,
                      "batch_real": args.batch_real},
        "backbone": {"name": "convnet", "width": args.width, "depth": 3, "norm": "instance"},
        "dd_loss": {"name": "dm"},
        "augmentation": {"name": "dsa"},
        "evaluators": [],
    }
    if case == "dm_mim4dd":
        data["regularizer"] = {"name": "mim4dd", "lambda": 0.8,
                               "critic": {"name": "linear", "out_dim": 128}}
    return data


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(case: str, args) -> dict:
    import torch

    from mim4dd_kit.engine import Run
    from mim4dd_kit.evaluators.train_from_scratch import accuracy, train_network
    from mim4dd_kit.recipe import validate_recipe
    from mim4dd_kit.registry import default_registry
    from mim4dd_kit.runtime import resolve_device

    torch.set_num_threads(args.threads) if args.threads else None
    recipe = validate_recipe(_recipe(case, args))
    device = resolve_device(args.device)
    run = Run(recipe, Path("/tmp/mdk-bench"), device, default_registry())
    run.setup()
    result = {"case": case, "device": str(device), "threads": torch.get_num_threads(),
              "width": args.width, "batch_real": args.batch_real, "ipc": args.ipc}
    if case == "eval_model":
        net = run.ctx.make_backbone().to(device)
        images, labels = run.syn.images.detach(), run.syn.labels
        _sync(device)
        t0 = time.perf_counter()
        train_network(net, images, labels, epochs=args.eval_epochs, lr=0.01, momentum=0.9,
                      weight_decay=5e-4, batch_size=256, augment=run.ctx.augment)
        _sync(device)
        t1 = time.perf_counter()
        acc = accuracy(net, run.data.test_images, run.data.test_labels)
        _sync(device)
        t2 = time.perf_counter()
        result.update(epochs=args.eval_epochs, train_s=t1 - t0, test_s=t2 - t1,
                      per_epoch_s=(t1 - t0) / args.eval_epochs, accuracy=acc)
    else:
        times = []
        for i in range(args.warmup + args.iters):
            _sync(device)
            t0 = time.perf_counter()
            logs = run.step(i)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        result.update(iters=args.iters, median_s=statistics.median(times),
                      min_s=min(times), loss=logs["loss"])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    rows = []
    passthrough = [a for a in sys.argv[1:] if a != "--json"]
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, *passthrough],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = next(r["median_s"] for r in rows if r["case"] == "dm")
    print(f"{'case':<12} {'time':>22} {'vs dm':>7} {'peak RSS MB':>12} {'peak CUDA MB':>13}")
    for r in rows:
        if "median_s" in r:
            t, ratio = f"{r['median_s']:.3f} s/iter", f"{r['median_s'] / base:.2f}"
        else:
            t, ratio = f"{r['train_s']:.1f} s/{r['epochs']} ep", "-"
        cuda = f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "-"
        print(f"{r['case']:<12} {t:>22} {ratio:>7} {r['peak_rss_mb']:>12.0f} {cuda:>13}")
    print(f"device {rows[0]['device']}, threads {rows[0]['threads']}, width {args.width}, "
          f"batch_real {args.batch_real}/class, IPC {args.ipc}")


if __name__ == "__main__":
    main()
