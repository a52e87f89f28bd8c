"""Time DM under extra CPU load: the toolkit's iteration and the baseline formulation, interleaved.

A shared node runs other people's jobs on the same cores. This benchmark starts such load
itself — busy-loop processes, ``factor x cores`` of them for each ``--loads`` factor — and
times, in one process and in alternation (toolkit, baseline, toolkit, baseline, ...), one
DM iteration of the toolkit (``Run.iterate``: chunked gradient-free real side, channels-last
twin) and one of the baseline formulation of ``bench_iteration.py`` (DM as the reference
code writes it: one class at a time, autograd on for the real batch, NCHW). Alternating the
two means drift in the machine's other load affects both alike. Usage:

    python benchmarks/bench_load.py                              # the issue's settings
    python benchmarks/bench_load.py --threads 1 2 --out-json load.json
    python benchmarks/bench_load.py --dataset digits --width 16 --batch-real 16 \\
        --iterations 2 --loads 0 1                               # a quick check

For every load factor and thread count it reports the median wall seconds and CPU seconds
(``time.process_time``: this process and all its threads, not the load processes) per
iteration of each formulation, and the ratios toolkit / baseline (below 1: the toolkit is
cheaper). The load processes are always stopped: on normal exit, on an error, on Ctrl-C and
on SIGTERM; each also exits by itself if this process disappears.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import sync
from bench_iteration import naive_dm_loss


def _spin(parent: int) -> None:
    """Keep one core busy until terminated or until ``parent`` is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    n = 0
    while True:
        n += 1
        if n % 5_000_000 == 0 and os.getppid() != parent:
            return


@contextlib.contextmanager
def cpu_load(processes: int, settle_s: float):
    """``processes`` busy-loop processes for the duration of the block, then stopped."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no copy of torch's thread pools
    procs: list = []
    try:
        for _ in range(processes):
            p = ctx.Process(target=_spin, args=(os.getpid(),), daemon=True,
                            name="bench_load-spin")
            procs.append(p)
            p.start()
        if processes:
            time.sleep(settle_s)  # the scheduler spreads them before the first timing
            dead = [p.pid for p in procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"load processes {dead} exited early")
        yield procs
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _recipe(args) -> dict:
    return {
        "name": "bench_load",
        "seed": 0,
        "device": "cpu",
        "dataset": {"name": args.dataset},
        "synthetic": {"ipc": args.ipc, "iterations": 1, "lr": 1.0,
                      "batch_real": args.batch_real},
        "backbone": {"name": "convnet", "width": args.width, "depth": 3, "norm": "instance"},
        "dd_loss": {"name": "dm"},
        "augmentation": {"name": "dsa"},
        "evaluators": [],
        **({"performance": {"chunk_mb": args.chunk_mb}} if args.chunk_mb is not None else {}),
    }


class Pair:
    """The two formulations of one DM iteration on one run's data, network and set."""

    def __init__(self, args):
        import torch

        from mim4dd_kit.config.recipe import validate_recipe
        from mim4dd_kit.config.registry import default_registry
        from mim4dd_kit.run.engine import Run

        self.device = torch.device("cpu")
        recipe = validate_recipe(_recipe(args))
        self.run = Run(recipe, Path(tempfile.mkdtemp(prefix="mdk-bench-load-")), self.device,
                       default_registry())
        self.run.setup()
        syn = self.run.syn
        # the baseline updates its own copy of the images, so neither formulation steers
        # the other's set
        self.base_images = syn.images.detach().clone().requires_grad_(True)
        self.base_labels = syn.labels
        self.base_opt = torch.optim.SGD([self.base_images], lr=recipe.synthetic.lr,
                                        momentum=0.5)
        self.iteration = 0

    def _naive_loss(self, images):
        """The baseline's loss, drawing network, real batch and DSA as ``dm`` does."""
        import torch

        ctx = self.run.ctx
        net = ctx.make_backbone().to(self.device, memory_format=torch.contiguous_format)
        net.train()
        net.requires_grad_(False)
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        params = None
        if ctx.augment is not None:
            params = ctx.augment.draw(ctx.augment.num_groups, tuple(real.shape[2:]))
            params = params.to(real.device, real.dtype)
        return naive_dm_loss(net, real, real_y, images, self.base_labels, ctx.augment, params,
                             ctx.data.info.num_classes)

    def equality(self) -> dict[str, float]:
        """Both formulations on the same draws: relative loss and image-gradient gaps."""
        import torch

        from mim4dd_kit.core.runtime import rng_state, set_rng_state

        syn = self.run.syn
        state = rng_state()
        ours = self.run.loss.compute(syn, 0, False).loss
        g_ours = torch.autograd.grad(ours, syn.images)[0]
        set_rng_state(state)
        naive = self._naive_loss(syn.images)
        g_naive = torch.autograd.grad(naive, syn.images)[0]
        a, b = float(ours.detach()), float(naive.detach())
        return {"loss_rel_diff": abs(a - b) / max(abs(b), 1e-12),
                "grad_rel_diff": float((g_ours - g_naive).norm()
                                       / g_naive.norm().clamp(min=1e-12))}

    def toolkit(self) -> None:
        self.run.iterate(self.iteration)
        self.iteration += 1

    def baseline(self) -> None:
        loss = self._naive_loss(self.base_images)
        self.base_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.base_opt.step()


def _timed(fn, device) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def measure_cell(pair: Pair, iterations: int, warmup: int) -> dict:
    """``warmup`` then ``iterations`` rounds of (toolkit, baseline); medians and ratios."""
    times: dict[str, list[tuple[float, float]]] = {"toolkit": [], "baseline": []}
    for i in range(warmup + iterations):
        for name, fn in (("toolkit", pair.toolkit), ("baseline", pair.baseline)):
            t = _timed(fn, pair.device)
            if i >= warmup:
                times[name].append(t)
    row: dict = {}
    for name, ts in times.items():
        row[f"{name}_wall_s"] = statistics.median(w for w, _ in ts)
        row[f"{name}_cpu_s"] = statistics.median(c for _, c in ts)
        row[f"{name}_wall_all"] = [w for w, _ in ts]
        row[f"{name}_cpu_all"] = [c for _, c in ts]
    row["wall_ratio"] = row["toolkit_wall_s"] / row["baseline_wall_s"]
    row["cpu_ratio"] = row["toolkit_cpu_s"] / row["baseline_cpu_s"]
    return row


def run_benchmark(args) -> dict:
    import torch

    cores = _cores()
    default_threads = torch.get_num_threads()
    threads = [t or default_threads for t in args.threads]
    loadavg_before = list(os.getloadavg())
    torch.manual_seed(0)
    pair = Pair(args)
    header = {
        "machine": {"cpu": _cpu_model(), "cores": cores, "os_cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_default_threads": default_threads,
                    "python": platform.python_version(),
                    "loadavg_before": loadavg_before},
        "settings": {"dataset": args.dataset, "ipc": args.ipc, "width": args.width,
                     "depth": 3, "norm": "instance", "batch_real_per_class": args.batch_real,
                     "augmentation": "dsa", "iterations": args.iterations,
                     "warmup": args.warmup, "loads": args.loads, "threads": threads,
                     "chunk_mb": pair.run.recipe.performance.chunk_mb,
                     "settle_s": args.settle},
    }
    header["equality"] = pair.equality()
    print(f"equal on the same draws: loss rel. diff {header['equality']['loss_rel_diff']:.1e}, "
          f"image-gradient rel. diff {header['equality']['grad_rel_diff']:.1e}",
          file=sys.stderr, flush=True)
    rows = []
    for factor in args.loads:
        n = round(factor * cores)
        with cpu_load(n, args.settle):
            for t in threads:
                torch.set_num_threads(t)
                row = {"load_factor": factor, "load_processes": n, "threads": t,
                       **measure_cell(pair, args.iterations, args.warmup),
                       "loadavg_after": os.getloadavg()[0]}
                rows.append(row)
                print(f"done: load {factor:g}x ({n} processes), {t} threads: toolkit "
                      f"{row['toolkit_wall_s']:.3f} s, baseline {row['baseline_wall_s']:.3f} s",
                      file=sys.stderr, flush=True)
    torch.set_num_threads(default_threads)
    return {**header, "rows": rows}


def format_table(result: dict) -> str:
    """Markdown: a header with the machine and settings, then one row per load and threads."""
    m, s, e = result["machine"], result["settings"], result["equality"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores available, torch {m['torch']} "
        f"(default {m['torch_default_threads']} threads), Python {m['python']}; "
        f"load average before: {', '.join(f'{x:.2f}' for x in m['loadavg_before'])}",
        f"Settings: {s['dataset']}, IPC {s['ipc']}, ConvNet-{s['width']} (depth 3, instance "
        f"norm), {s['batch_real_per_class']} real images per class, DSA; median of "
        f"{s['iterations']} interleaved iterations after {s['warmup']} warm-up per row; "
        f"performance.chunk_mb {s['chunk_mb']:g}; "
        f"extra load = busy-loop processes, factor x {m['cores']} cores",
        f"Equal on the same draws: loss rel. diff {e['loss_rel_diff']:.1e}, image-gradient "
        f"rel. diff {e['grad_rel_diff']:.1e}",
        "",
        "| extra load | load processes | threads | toolkit wall s/iter | baseline wall s/iter "
        "| wall ratio | toolkit CPU s/iter | baseline CPU s/iter | CPU ratio "
        "| load avg (1 min) after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['load_factor']:g}x | {r['load_processes']} | {r['threads']} "
            f"| {r['toolkit_wall_s']:.3f} | {r['baseline_wall_s']:.3f} | {r['wall_ratio']:.2f} "
            f"| {r['toolkit_cpu_s']:.3f} | {r['baseline_cpu_s']:.3f} | {r['cpu_ratio']:.2f} "
            f"| {r['loadavg_after']:.2f} |")
    lines.append("\nratio = toolkit / baseline formulation (below 1: the toolkit is cheaper)")
    return "\n".join(lines)


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is negative")
        return value
    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--ipc", type=_non_negative(int), default=10)
    ap.add_argument("--width", type=_non_negative(int), default=128, help="ConvNet width")
    ap.add_argument("--batch-real", type=_non_negative(int), default=256,
                    help="real images per class per iteration")
    ap.add_argument("--iterations", type=_non_negative(int), default=3,
                    help="timed iterations of each formulation per row")
    ap.add_argument("--warmup", type=_non_negative(int), default=1,
                    help="untimed iterations of each formulation before each row")
    ap.add_argument("--loads", type=_non_negative(float), nargs="+", default=[0, 1, 4],
                    help="extra load factors: busy processes per available core")
    ap.add_argument("--threads", type=_non_negative(int), nargs="+", default=[0],
                    help="torch threads; several values sweep them at every load "
                         "(0: torch's default)")
    ap.add_argument("--chunk-mb", type=_non_negative(float),
                    help="the recipe's performance.chunk_mb for the toolkit's chunked passes "
                         "(default: the toolkit's default; 0 sends whole batches)")
    ap.add_argument("--settle", type=_non_negative(float), default=2.0,
                    help="seconds between starting the load and the first timing")
    ap.add_argument("--out-json", type=Path, help="also write the result as JSON here")
    args = ap.parse_args()
    if args.iterations < 1:
        ap.error("--iterations must be at least 1")
    # SIGTERM unwinds like Ctrl-C, so the load processes are stopped by cpu_load's finally
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from mim4dd_kit.core.errors import MdkError

    try:
        result = run_benchmark(args)
    except MdkError as err:  # a bad dataset name or size: the toolkit's message, no traceback
        sys.exit(f"bench_load.py: {err}")
    except KeyboardInterrupt:  # the load processes are already stopped (cpu_load's finally)
        sys.exit("bench_load.py: interrupted")
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=2))
    print(format_table(result))


if __name__ == "__main__":
    main()
