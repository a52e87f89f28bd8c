"""Every base method with and without MIM4DD on Fashion-MNIST, same seeds and budgets.

Runs the shipped recipes ``recipes/fashion_mnist_ipc<N>_<method>[_mim].yaml`` with one set
of budget overrides per method (a CPU-sized budget by default, ``--budget published`` for
the recipes as written), evaluates each set by the recipe's protocol and prints a Markdown
table (method, IPC, without, with MIM4DD, difference, budget). Finished runs are reused
(``runs/compare/<recipe>/``), so an interrupted sweep continues where it stopped.

    python benchmarks/methods_compare.py                       # all methods, IPC 1 and 10
    python benchmarks/methods_compare.py --methods dm bptt --ipc 10
    python benchmarks/methods_compare.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["dm", "dc", "dsa", "dream", "mtt", "bptt", "cafe"]

#: overrides applied to every recipe under the CPU budget: ConvNet width 32 for both the
#: distillation and the evaluation networks (same protocol otherwise: 300 epochs, DSA),
#: 3 evaluation networks, 64 real images per class.
CPU_COMMON = [
    "backbone.width=32",
    "synthetic.batch_real=64",
    "evaluators.0.models=3",
    "evaluators.0.epochs=300",
    "output.checkpoint_every=50",
]
#: per-method iterations (engine iterations = image updates) and method knobs on a CPU
CPU_METHOD = {
    "dm": ["synthetic.iterations=200"],
    "dc": ["synthetic.iterations=100"],
    "dsa": ["synthetic.iterations=100"],
    # one outer iteration of the reference loop (100 iterations x one image step per class)
    "dream": ["synthetic.iterations=100"],
    # 3 experts of 6 epochs, lr 0.01 at both IPCs (one shared buffer)
    "mtt": ["synthetic.iterations=100", "dd_loss.num_experts=3", "dd_loss.max_start_epoch=4",
            "dd_loss.expert_epochs=2", "dd_loss.lr_teacher=0.01", "synthetic.lr_init=0.01"],
    "bptt": ["synthetic.iterations=100"],
    "cafe": ["synthetic.iterations=100"],
}


def overrides(method: str, budget: str) -> list[str]:
    if budget == "published":
        return []
    return [*CPU_COMMON, *CPU_METHOD[method]]


def run_one(recipe: Path, sets: list[str], out: Path) -> dict:
    from mim4dd_kit.io.synthetic import load_synthetic
    from mim4dd_kit.run.engine import run

    final = out / "synthetic.safetensors"
    if final.exists() and not (out / "checkpoint.safetensors").exists():
        meta = load_synthetic(final).metadata
        if meta.get("evaluations"):
            return {"evaluations": meta["evaluations"], "seconds": meta.get("run_seconds"),
                    "reused": True}
    t0 = time.perf_counter()
    resume = (out / "checkpoint.safetensors").exists()
    res = run(recipe, overrides=sets, out=out, resume=resume, overwrite=not resume,
              progress=False)
    return {"evaluations": res.evaluations, "seconds": time.perf_counter() - t0,
            "reused": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--budget", choices=["cpu", "published"], default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    for ipc in args.ipc:
        for method in args.methods:
            row = {"method": method, "ipc": ipc, "budget": overrides(method, args.budget)}
            for variant in ("", "_mim"):
                name = f"fashion_mnist_ipc{ipc}_{method}{variant}"
                result = run_one(ROOT / "recipes" / f"{name}.yaml", row["budget"],
                                 args.out / f"{name}-{args.budget}")
                ev = result["evaluations"]["train_from_scratch"]
                row["mim" if variant else "base"] = {
                    "mean": ev["accuracy_mean"], "std": ev["accuracy_std"],
                    "accuracies": ev["accuracies"], "seconds": result["seconds"],
                }
                print(f"{name}: {ev['accuracy_mean']:.2f} ± {ev['accuracy_std']:.2f} "
                      f"({result['seconds'] or 0:.0f} s{', reused' if result['reused'] else ''})",
                      flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print("\n| method | IPC | without MIM4DD | with MIM4DD | difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        b, m = r["base"], r["mim"]
        print(f"| {r['method']} | {r['ipc']} | {b['mean']:.2f} ± {b['std']:.2f} | "
              f"{m['mean']:.2f} ± {m['std']:.2f} | {m['mean'] - b['mean']:+.2f} |")


if __name__ == "__main__":
    main()
