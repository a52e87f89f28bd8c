"""How many image updates a CAFE network lives, and how long it trains between updates.

CAFE's reference loop counts its 2,000 iterations (and halves the image lr at 1,200 /
1,600 / 1,800) in *networks*, each of which serves as many image updates as its accuracy
watcher lets it; the toolkit's engine counts image updates. This script runs a CAFE recipe
for a number of image updates and reports, from the loss's logs, the image updates per
finished network and the inner epochs per update, so a recipe can state its length in
image updates (docs/components/cafe.md).

    python benchmarks/cafe_watcher.py recipes/fashion_mnist_ipc10_cafe.yaml \\
        --iterations 120 --set backbone.width=32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import torch

    from mim4dd_kit.config.recipe import load_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.run.engine import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--iterations", type=int, default=100, help="image updates to run")
    parser.add_argument("--set", action="append", default=[], help="recipe override")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [*args.set, "device=cpu", "evaluators=[]"])
    with tempfile.TemporaryDirectory() as tmp:
        r = Run(recipe, Path(tmp), torch.device("cpu"), default_registry())
        r.setup()
        torch.manual_seed(recipe.seed)
        logs = []
        for it in range(args.iterations):
            logs.append(r.step(it))
            print(f"{it + 1} networks={logs[-1]['cafe_networks']:.0f} inner="
                  f"{logs[-1]['cafe_inner_epochs']:.0f}", file=sys.stderr, flush=True)
    nets = [int(x["cafe_networks"]) for x in logs]
    # a network is finished when a later update used a newer one
    lives = [nets.count(n) for n in sorted(set(nets)) if n < nets[-1]]
    inner = [int(x["cafe_inner_epochs"]) for x in logs if x["cafe_inner_epochs"] > 0]
    result = {
        "recipe": str(args.recipe), "overrides": args.set, "iterations": args.iterations,
        "networks": nets[-1], "finished_networks": len(lives),
        "updates_per_network": lives,
        "updates_per_network_mean": statistics.mean(lives) if lives else None,
        "inner_epochs_mean": statistics.mean(inner) if inner else None,
        "inner_epochs_max": max(inner) if inner else None,
        "inner_capped": r.loss.schedule.capped,
        "watch_acc_last": logs[-1]["cafe_watch_acc"],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
