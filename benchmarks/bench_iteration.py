"""Time one distillation iteration of every method, with and without MIM4DD, and one
evaluation model, at Fashion-MNIST IPC 10 sizes.

Each case runs in its own process so that peak memory (max RSS, and CUDA peak allocated
where used) belongs to that case alone. Usage:

    python benchmarks/bench_iteration.py                 # all cases, a table
    python benchmarks/bench_iteration.py --json          # the same as JSON
    python benchmarks/bench_iteration.py --case dm --iters 5
    python benchmarks/bench_iteration.py --methods dm bptt     # a subset

Settings (the DM reference's): ConvNet width 128, depth 3, instance norm; IPC 10;
256 real images per class; DSA on; every method with its published per-iteration knobs
(DC/DSA/DREAM: outer_loop 10, inner_loop 50 at IPC 10; BPTT: 20 unrolled steps; MTT:
syn_steps 20 on the whole set). ``--batch-real`` and ``--width`` shrink them.

An engine iteration is one update of the synthetic images. For DC/DSA/DREAM/CAFE that
includes the inner training of the persistent network between updates, which happens on
all calls but every ``outer_loop``-th; the median over iterations therefore reports the
typical (training) call. MTT needs expert trajectories: the benchmark builds a buffer
of one expert trained for ``--mtt-expert-epochs`` epochs on ``--mtt-expert-images``
real images (the step's cost does not depend on how well the expert was trained), in a
throw-away cache folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import mtt_subset, sync

METHODS = ["dm", "dc", "dsa", "dsa_kmeans", "dream", "mtt", "bptt", "cafe"]
CASES = ["dm_baseline"] + [c for m in METHODS for c in (m, f"{m}_mim4dd")] + ["eval_model"]
#: the published per-iteration knobs at IPC 10 (see docs/components/<method>.md)
LOSS_PARAMS = {
    "dm": {},
    "dc": {"outer_loop": 10, "inner_loop": 50},
    "dsa": {"outer_loop": 10, "inner_loop": 50},
    "dsa_kmeans": {"outer_loop": 10, "inner_loop": 50},
    # one iteration = one image step per class plus the network's training on real data
    "dream": {},
    "mtt": {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 1, "num_experts": 1},
    "bptt": {"inner_steps": 20},
    "cafe": {},
}


#: the regularizer of the "+ mim4dd" cases: the shipped default (the recipes' *_mim; it
#: takes MTT's / BPTT's trained network as given), the same with the regularizer's gradient
#: through their unroll (network_gradient: true, shipped until 2026-12-01), or the paper's
#: literal objective with linear critics of 128 outputs
MIM_SETTINGS = {
    "shipped": {"name": "mim4dd"},
    "shipped_through": {"name": "mim4dd", "network_gradient": True},
    "literal": {"name": "mim4dd", "preset": "literal", "lambda": 0.8,
                "critic": {"name": "linear", "out_dim": 128}},
}


def _method(case: str) -> str:
    if case in ("eval_model", "dm_baseline"):
        return "dm"
    return case.removesuffix("_mim4dd")


def naive_dm_loss(net, real, real_y, syn, syn_y, augment, params, num_classes):
    """DM as the reference code writes it: one class at a time, graphs for real features.

    The same maths as ``losses/dm.py``: per class, the squared distance between the mean
    embedding of the augmented real batch and of the augmented synthetic images, with one
    augmentation draw per class shared by both sides. The real forward builds an autograd
    graph that is then detached, as in the reference implementation.
    """
    import torch

    loss = syn.new_zeros(())
    for c in range(num_classes):
        r, s = real[real_y == c], syn[syn_y == c]
        if augment is not None:
            r = augment.apply(r, params.take(torch.full((len(r),), c, device=r.device)))
            s = augment.apply(s, params.take(torch.full((len(s),), c, device=s.device)))
        out_real = net.embed(r).detach()
        out_syn = net.embed(s)
        loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
    return loss


def _dm_baseline(run, args, device) -> dict:
    """Time the naive formulation and check it equals the toolkit's DM on the same draws."""
    import torch

    from mim4dd_kit.core.runtime import rng_state, set_rng_state

    ctx, syn = run.ctx, run.syn
    c = ctx.data.info.num_classes
    opt = torch.optim.SGD([syn.images], lr=run.recipe.synthetic.lr, momentum=0.5)

    def naive_step():
        # the same random stream as DistributionMatching.compute: network, real batch, DSA
        # the reference's memory layout (NCHW); same weights as the run's network
        net = ctx.make_backbone().to(device, memory_format=torch.contiguous_format)
        net.train()
        net.requires_grad_(False)
        real, real_y = ctx.data.sample_per_class(ctx.batch_real)
        params = ctx.augment.draw(ctx.augment.num_groups, tuple(real.shape[2:])) \
            if ctx.augment is not None else None
        if params is not None:
            params = params.to(real.device, real.dtype)
        return naive_dm_loss(net, real, real_y, syn.images, syn.labels, ctx.augment, params, c)

    # equality: the same draws through both formulations
    state = rng_state()
    ours = run.loss.compute(syn, 0, False).loss
    g_ours = torch.autograd.grad(ours, syn.images)[0]
    set_rng_state(state)
    naive = naive_step()
    g_naive = torch.autograd.grad(naive, syn.images)[0]
    loss_rel = abs(float(ours) - float(naive)) / max(abs(float(naive)), 1e-12)
    grad_rel = float((g_ours - g_naive).norm() / g_naive.norm().clamp(min=1e-12))
    times = []
    for i in range(args.warmup + args.iters):
        sync(device)
        t0 = time.perf_counter()
        loss = naive_step()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"iters": args.iters, "median_s": statistics.median(times), "min_s": min(times),
            "loss": float(naive), "equal_loss_rel_diff": loss_rel,
            "equal_grad_rel_diff": grad_rel}


def _recipe(case: str, args) -> dict:
    method = _method(case)
    data = {
        "name": f"bench_{case}",
        "seed": 0,
        "device": args.device,
        "dataset": {"name": args.dataset},
        "synthetic": {"ipc": args.ipc, "iterations": 1, "lr": 1.0,
                      "batch_real": args.batch_real},
        "backbone": {"name": "convnet", "width": args.width, "depth": 3, "norm": "instance"},
        "dd_loss": {"name": method, **LOSS_PARAMS[method]},
        "augmentation": {"name": "dsa"},
        "evaluators": [],
        "performance": {"bf16": args.bf16, "channels_last": not args.no_channels_last,
                        # as in a full-length run (auto compiles from 200 iterations)
                        "compile_passes": not args.no_compile_passes},
    }
    if method == "mtt":
        data["dd_loss"].update(train_epochs=args.mtt_expert_epochs)
        data["synthetic"].update(learn_lr=True, lr_init=0.01, lr=100.0)
        tmp = Path(tempfile.mkdtemp(prefix="mdk-bench-"))
        os.environ["MDK_CACHE"] = str(tmp / "cache")  # a throw-away expert buffer
        data["dataset"] = mtt_subset(args.dataset, args.mtt_expert_images, tmp)
    if case.endswith("_mim4dd"):
        data["regularizer"] = copy.deepcopy(MIM_SETTINGS[args.mim])
    return data


def run_case(case: str, args) -> dict:
    import torch

    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.core.runtime import resolve_device
    from mim4dd_kit.run.engine import Run
    from mim4dd_kit.training.loop import accuracy, train_network

    torch.set_num_threads(args.threads) if args.threads else None
    recipe = validate_recipe(_recipe(case, args))
    device = resolve_device(args.device)
    run = Run(recipe, Path("/tmp/mdk-bench"), device, default_registry())
    run.setup()
    result = {"case": case, "device": str(device), "threads": torch.get_num_threads(),
              "width": args.width, "batch_real": args.batch_real, "ipc": args.ipc}
    if case == "dm_baseline":
        result.update(_dm_baseline(run, args, device))
    elif case == "eval_model":
        net = run.ctx.make_backbone().to(device)
        images, labels = run.syn.images.detach(), run.syn.labels
        sync(device)
        t0 = time.perf_counter()
        train_network(net, images, labels, epochs=args.eval_epochs, lr=0.01, momentum=0.9,
                      weight_decay=5e-4, batch_size=256, augment=run.ctx.augment,
                      compiled=args.eval_compile)
        sync(device)
        t1 = time.perf_counter()
        acc = accuracy(net, run.data.test_images, run.data.test_labels)
        sync(device)
        t2 = time.perf_counter()
        result.update(epochs=args.eval_epochs, compiled=args.eval_compile,
                      train_s=t1 - t0, test_s=t2 - t1,
                      per_epoch_s=(t1 - t0) / args.eval_epochs, accuracy=acc)
    else:
        times = []
        for i in range(args.warmup + args.iters):
            sync(device)
            t0 = time.perf_counter()
            logs = run.iterate(i)  # all of the loss's image steps of one iteration
            sync(device)
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
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--mtt-expert-epochs", type=int, default=3)
    ap.add_argument("--mtt-expert-images", type=int, default=300,
                    help="real images per class the MTT benchmark's expert trains on")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation-network case")
    ap.add_argument("--bf16", action="store_true", help="performance.bf16: bfloat16 autocast")
    ap.add_argument("--no-channels-last", action="store_true",
                    help="performance.channels_last: false (NCHW networks)")
    ap.add_argument("--no-compile-passes", action="store_true",
                    help="performance.compile_passes: false (eager gradient-free passes; "
                    "a full-length CPU run compiles them)")
    ap.add_argument("--eval-compile", action="store_true",
                    help="the evaluation network trains through torch.compile "
                    "(train_from_scratch's compile: true); its first epoch compiles")
    ap.add_argument("--mim", choices=sorted(MIM_SETTINGS), default="shipped",
                    help="the regularizer of the + mim4dd cases")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", type=Path, help="also write the rows as JSON to this file")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    keep = ["--dataset", args.dataset, "--device", args.device, "--ipc", str(args.ipc),
            "--width", str(args.width), "--batch-real", str(args.batch_real),
            "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--eval-epochs", str(args.eval_epochs), "--threads", str(args.threads),
            "--mtt-expert-epochs", str(args.mtt_expert_epochs),
            "--mtt-expert-images", str(args.mtt_expert_images), "--mim", args.mim,
            *(["--bf16"] if args.bf16 else []),
            *(["--no-channels-last"] if args.no_channels_last else []),
            *(["--no-compile-passes"] if args.no_compile_passes else []),
            *(["--eval-compile"] if args.eval_compile else [])]
    rows = []
    cases = [c for c in CASES if (c == "eval_model" and not args.no_eval)
             or (c != "eval_model" and _method(c) in args.methods)]
    for case in cases:
        out = subprocess.run([sys.executable, __file__, "--case", case, *keep],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"done: {case}", file=sys.stderr, flush=True)
    if args.save:
        args.save.write_text(json.dumps(rows, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(format_table(rows, args))


def format_table(rows: list[dict], args) -> str:
    """Markdown: method, setting, ours, baseline formulation, ratio, memory, MIM4DD cost."""
    by = {r["case"]: r for r in rows}
    setting = (f"IPC {args.ipc}, width {args.width}, batch_real {args.batch_real}/class, "
               f"{rows[0]['device']}, {rows[0]['threads']} threads, "
               f"{'bf16 autocast' if args.bf16 else 'fp32'}, "
               f"performance.channels_last {not args.no_channels_last}, "
               f"performance.compile_passes {not args.no_compile_passes}")
    lines = [f"Setting: {setting}", "",
             "| method | ours s/iter | baseline formulation s/iter | speed-up | peak RSS MB "
             "| + mim4dd s/iter | mim4dd overhead | peak RSS MB + mim4dd |",
             "|---|---|---|---|---|---|---|---|"]
    for m in args.methods:
        a, b = by.get(m), by.get(f"{m}_mim4dd")
        if a is None or b is None:
            continue
        base = by.get("dm_baseline") if m == "dm" else None
        base_s = f"{base['median_s']:.3f}" if base else "—"
        ratio = f"{base['median_s'] / a['median_s']:.2f}x" if base else "—"
        lines.append(
            f"| {m} | {a['median_s']:.3f} | {base_s} | {ratio} | {a['peak_rss_mb']:.0f} | "
            f"{b['median_s']:.3f} | {100 * (b['median_s'] / a['median_s'] - 1):+.1f}% | "
            f"{b['peak_rss_mb']:.0f} |")
    base = by.get("dm_baseline")
    if base:
        lines.append(
            f"\nbaseline formulation (dm, one class at a time with graphs for real features): "
            f"peak RSS {base['peak_rss_mb']:.0f} MB; equal to ours on the same draws: loss "
            f"rel. diff {base['equal_loss_rel_diff']:.1e}, image-gradient rel. diff "
            f"{base['equal_grad_rel_diff']:.1e}")
    e = by.get("eval_model")
    if e:
        lines.append(f"\none evaluation network: {e['train_s']:.1f} s for {e['epochs']} epochs "
                     f"+ {e['test_s']:.1f} s test, peak RSS {e['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
