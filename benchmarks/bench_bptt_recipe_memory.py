"""Peak memory of one engine iteration of a shipped BPTT recipe, with or without
gradient checkpointing of the unroll.

    python benchmarks/bench_bptt_recipe_memory.py true   # dd_loss.checkpoint=true
    python benchmarks/bench_bptt_recipe_memory.py false  # the whole graph kept

Runs ``recipes/fashion_mnist_ipc10_bptt.yaml`` (``--recipe`` for another) for one
iteration on the CPU, in this process: after set-up, freed memory is handed back to the
system, the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``,
Linux) and the peak is read after the iteration (``VmHWM``). Progress (inner-step calls,
resident set) goes to stderr every 10 calls; with checkpointing each inner step is called
twice (the graph-free pass and its replay). An allocation failure (e.g. under
``prlimit --as``) is reported with the step calls reached instead of a traceback. The
result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from mim4dd_kit.config.recipe import load_recipe
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.run.engine import Run
from mim4dd_kit.training import unroll


def _kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", choices=["true", "false"])
    ap.add_argument("--recipe", default="recipes/fashion_mnist_ipc10_bptt.yaml")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, ["synthetic.iterations=1", "evaluators=[]",
                                       f"dd_loss.checkpoint={args.checkpoint}"])
    with tempfile.TemporaryDirectory(prefix="mdk-bptt-mem-") as out:
        run = Run(recipe, Path(out), torch.device("cpu"), default_registry())
        run.setup()
        calls = 0
        step = unroll._step
        t0 = time.time()

        def counting(*a, **k):
            nonlocal calls
            calls += 1
            if calls % 10 == 0:
                print(f"step calls {calls} t={time.time() - t0:.0f}s "
                      f"rss={_kib('VmRSS') / 1024:.0f}MB", file=sys.stderr, flush=True)
            return step(*a, **k)

        unroll._step = counting  # unroll looks the step function up at every call
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = _kib("VmRSS")
        t0 = time.time()
        error, logs = None, {}
        try:
            logs = run.step(0)
        except (RuntimeError, MemoryError) as exc:
            error = str(exc)[:200]
        peak = _kib("VmHWM")
    print(json.dumps({
        "recipe": args.recipe, "checkpoint": args.checkpoint,
        "inner_steps": run.loss.params.inner_steps, "threads": torch.get_num_threads(),
        "base_rss_mb": base / 1024, "peak_rss_mb": peak / 1024,
        "growth_mb": (peak - base) / 1024, "seconds": time.time() - t0,
        "step_calls": calls, "error": error, "loss": logs.get("loss")}))


if __name__ == "__main__":
    main()
