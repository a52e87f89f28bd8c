"""Peak memory and time of one MTT / BPTT iteration against the unroll length, with and
without gradient checkpointing of the unroll (``dd_loss.checkpoint``) and, for BPTT, with
truncation (``dd_loss.truncate``).

Every point (method, steps, checkpoint, truncate) runs in a fresh process, as in
``bench_iteration.py``, so its peak memory belongs to it alone. After set-up and
``--warmup`` iterations (one-time costs), freed memory is handed back to the system and
the peak is taken over the next engine iteration:

- CPU: the growth of the process's resident set during that iteration. The kernel's
  high-water mark is reset just before it (``/proc/self/clear_refs``, Linux); where that
  is not possible the max RSS of the whole process is used, which may include set-up;
- CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before it.

The time is the median over ``--iters`` further iterations. Usage:

    python benchmarks/bench_unroll_memory.py --method mtt bptt --steps 10 20 40 80
    python benchmarks/bench_unroll_memory.py --method bptt --steps 20 40 --truncate 10
    python benchmarks/bench_unroll_memory.py --method mtt --steps 2 4 --width 8 \\
        --dataset digits --checkpoint both --iters 1          # a smoke run

Settings follow ``bench_iteration.py``: ConvNet (``--width``, ``--depth``, instance
norm), IPC ``--ipc``, ``--batch-real`` real images per class, DSA on (``--augment
none`` turns it off), the whole synthetic set in every inner step (``--batch-syn``
changes it). MTT trains one expert for ``--mtt-expert-epochs`` epochs on
``--mtt-expert-images`` real images per class in a throw-away cache (the step's cost does
not depend on how well the expert was trained); ``max_start_epoch`` 1, ``expert_epochs``
1. ``--segment k`` sets the segment length of the checkpointed rows (1: every step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import mtt_subset, sync

METHODS = ["mtt", "bptt"]


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) if m else None


def _release_free_memory() -> None:
    """Hand memory the allocator keeps after frees back to the system (glibc), so the
    measured iteration's growth is not hidden in memory an earlier one left behind."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _recipe(args, method: str, steps: int, segment: int, truncate: int | None) -> dict:
    loss: dict = {"name": method, "batch_syn": args.batch_syn, "checkpoint": segment or False}
    if method == "bptt":
        loss.update(inner_steps=steps, truncate=truncate)
    else:
        loss.update(syn_steps=steps, expert_epochs=1, max_start_epoch=1, num_experts=1,
                    train_epochs=args.mtt_expert_epochs)
    data = {
        "name": f"bench_unroll_{method}",
        "seed": 0,
        "device": args.device,
        "dataset": {"name": args.dataset},
        "synthetic": {"ipc": args.ipc, "iterations": 1, "lr": 1.0,
                      "batch_real": args.batch_real},
        "backbone": {"name": "convnet", "width": args.width, "depth": args.depth,
                     "norm": "instance"},
        "dd_loss": loss,
        "augmentation": {"name": args.augment},
        "evaluators": [],
    }
    if method == "mtt":
        data["dataset"] = json.loads(args.mtt_data)  # the parent's tensor_file entry
        data["synthetic"].update(learn_lr=True, lr_init=0.01)  # image lr 1: no NaN
    return data


def run_point(args) -> dict:
    """One point, in this process: set up, warm up, measure one iteration, time more."""
    import torch

    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.core.errors import RunError
    from mim4dd_kit.core.runtime import resolve_device
    from mim4dd_kit.run.engine import Run

    if args.threads:
        torch.set_num_threads(args.threads)
    method, steps, segment = args.point[0], int(args.point[1]), int(args.point[2])
    truncate = int(args.point[3]) or None
    recipe = validate_recipe(_recipe(args, method, steps, segment, truncate))
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="mdk-bench-unroll-") as out:
        run = Run(recipe, Path(out), device, default_registry())
        run.setup()

        for i in range(args.warmup):  # one-time costs (library set-up, caches)
            run.step(i)
        sync(device)
        _release_free_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        reset = _reset_peak_rss()
        base_rss = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        logs = run.step(args.warmup)
        sync(device)
        measured_s = time.perf_counter() - t0
        hwm = _rss_kib("VmHWM") if reset else None
        peak_rss = hwm if hwm is not None else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss
        times = []
        for i in range(args.warmup + 1, args.warmup + 1 + args.iters):
            sync(device)
            t0 = time.perf_counter()
            try:
                logs = run.step(i)
            except RunError:  # a diverging trajectory (weak benchmark expert): cost is known
                break
            sync(device)
            times.append(time.perf_counter() - t0)
        times = times or [measured_s]
    result = {"method": method, "steps": steps, "checkpoint": segment, "truncate": truncate,
              "device": str(device), "threads": torch.get_num_threads(),
              "median_s": statistics.median(times) if times else float("nan"),
              "loss": logs["loss"] if times else float("nan"),
              "peak_rss_mb": peak_rss / 1024,
              "rss_growth_mb": (peak_rss - base_rss) / 1024 if base_rss is not None else None,
              "rss_peak_reset": reset}
    if device.type == "cuda":
        result["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    return result


def _points(args) -> list[tuple[str, int, int, int]]:
    segments = {"off": [0], "on": args.segment, "both": [0, *args.segment]}[args.checkpoint]
    points = []
    for method in args.method:
        truncs = [0, *args.truncate] if method == "bptt" else [0]
        for steps in args.steps:
            for trunc in truncs:
                if trunc and trunc >= steps:
                    continue  # nothing is truncated
                points += [(method, steps, seg, trunc) for seg in segments]
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--steps", nargs="+", type=int, default=[10, 20, 40, 80],
                    help="unroll lengths: BPTT inner_steps, MTT syn_steps")
    ap.add_argument("--checkpoint", choices=["off", "on", "both"], default="both")
    ap.add_argument("--segment", nargs="+", type=int, default=[1],
                    help="segment lengths of the checkpointed rows")
    ap.add_argument("--truncate", nargs="*", type=int, default=[],
                    help="BPTT: also rows with these truncate windows")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--batch-syn", type=int, default=None)
    ap.add_argument("--augment", choices=["dsa", "none"], default="dsa")
    ap.add_argument("--warmup", type=int, default=1,
                    help="iterations before the measured one (not measured)")
    ap.add_argument("--iters", type=int, default=3,
                    help="timed iterations after the measured one")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--mtt-expert-epochs", type=int, default=2)
    ap.add_argument("--mtt-expert-images", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", type=Path, help="also write the rows as JSON to this file")
    ap.add_argument("--point", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--mtt-data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if any(s < 1 for s in [*args.steps, *args.segment, *args.truncate]):
        ap.error("--steps, --segment and --truncate take integers >= 1")
    if args.point:
        print(json.dumps(run_point(args)))
        return
    with tempfile.TemporaryDirectory(prefix="mdk-bench-unroll-") as tmp:
        env = {**os.environ, "MDK_CACHE": str(Path(tmp) / "cache")}  # one expert for all
        common = ["--dataset", args.dataset, "--device", args.device, "--ipc", str(args.ipc),
                  "--width", str(args.width), "--depth", str(args.depth),
                  "--batch-real", str(args.batch_real), "--augment", args.augment,
                  "--warmup", str(args.warmup), "--iters", str(args.iters),
                  "--threads", str(args.threads),
                  "--mtt-expert-epochs", str(args.mtt_expert_epochs)]
        if args.batch_syn:
            common += ["--batch-syn", str(args.batch_syn)]
        if "mtt" in args.method:
            entry = mtt_subset(args.dataset, args.mtt_expert_images, Path(tmp))
            common += ["--mtt-data", json.dumps(entry)]
        rows = []
        for point in _points(args):
            proc = subprocess.run([sys.executable, __file__, "--point", *map(str, point),
                                   *common], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"point {point} failed:\n{proc.stderr}", file=sys.stderr, flush=True)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"done: {point}", file=sys.stderr, flush=True)
    if args.save:
        args.save.write_text(json.dumps(rows, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cuda = "peak_cuda_mb" in rows[0]
    print("| method | steps | checkpoint | truncate | s / iter | peak MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = r["peak_cuda_mb"] if cuda else r["rss_growth_mb"]
        print(f"| {r['method']} | {r['steps']} | {r['checkpoint'] or 'off'} | "
              f"{r['truncate'] or '-'} | {r['median_s']:.3f} | {peak:.1f} |")
    what = ("CUDA max_memory_allocated growth over one iteration" if cuda else
            "resident-set growth over one iteration" + (
                "" if rows[0]["rss_peak_reset"] else " (max RSS incl. set-up: no reset)"))
    print(f"\npeak MB: {what}. device {rows[0]['device']}, threads {rows[0]['threads']}, "
          f"{args.dataset}, ConvNet width {args.width} depth {args.depth}, IPC {args.ipc}, "
          f"batch_real {args.batch_real}/class, batch_syn {args.batch_syn or 'all'}, "
          f"augmentation {args.augment}; checkpoint k: segments of k steps")


if __name__ == "__main__":
    main()
