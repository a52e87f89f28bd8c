"""The paper's analyses on Fashion-MNIST, made by the toolkit's own commands' functions.

Writes into ``--out`` (default ``docs/analysis``):

- ``table1.md``: a Table-1-style comparison of coreset baselines (random, herding,
  k-center) and DM / DM + MIM4DD at IPC 1 and 10, every set scored by the same protocol
  (``mdk compare``);
- ``cka_dm.png`` / ``cka_dm_mim.png`` (+ ``.json``): linear-CKA maps between a network
  trained on the real data and one trained on each IPC 10 set (paper Fig. 5, ``cka``);
- ``cross_arch.md``: the IPC 10 sets on six architectures (``cross_arch``);
- ``mi_estimate.md``: the MIM4DD lower bound per layer for both IPC 10 sets (``mi_estimate``);
- ``loss_curves_dm_mim.png`` (paper Fig. 4), ``grid_dm.png`` / ``grid_dm_mim.png`` (Fig. 6).

The DM sets are the shipped recipes run under the CPU budget of ``methods_compare.py``
(shared run folders under ``runs/compare/``, reused when present). Everything runs at
that budget: ConvNet width 32 for distillation, evaluation, coreset features and CKA.

    python benchmarks/analysis_fmnist.py                  # everything (about an hour, CPU)
    python benchmarks/analysis_fmnist.py --only table1 cka
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods_compare import overrides, run_one  # noqa: E402

WIDTH = 32
#: the protocol at the CPU budget: 3 networks x 300 epochs, DSA, ConvNet width 32
PROTOCOL = {"name": "train_from_scratch", "models": 3, "epochs": 300,
            "backbone": {"name": "convnet", "width": WIDTH}}
FEATURES = {"space": "convnet", "width": WIDTH, "epochs": 2}
PARTS = ["table1", "cka", "cross_arch", "mi", "pictures"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dm_set(ipc: int, mim: bool, runs: Path) -> Path:
    name = f"fashion_mnist_ipc{ipc}_dm{'_mim' if mim else ''}"
    out = runs / f"{name}-cpu"
    run_one(ROOT / "recipes" / f"{name}.yaml", overrides("dm", "cpu"), out)
    return out / "synthetic.safetensors"


def coreset_set(method: str, ipc: int, root: Path) -> Path:
    from mim4dd_kit.io.synthetic import load_synthetic
    from mim4dd_kit.run.baseline import make_baseline
    from mim4dd_kit.run.evaluate import evaluate

    path = root / f"{method}_ipc{ipc}.safetensors"
    if not path.exists():
        make_baseline("fashion_mnist", method, ipc, 0, path,
                      features=None if method == "random" else FEATURES, device="cpu")
    if "train_from_scratch" not in (load_synthetic(path).metadata.get("evaluations") or {}):
        from mim4dd_kit.api import EvaluatorRef

        evaluate(path, evaluators=[EvaluatorRef.model_validate(PROTOCOL)], device="cpu",
                 save=True)
    return path


def table1(out: Path, runs: Path, coresets: Path) -> None:
    from mim4dd_kit.analysis.compare import compare, format_compare

    paths = []
    for ipc in (1, 10):
        for method in ("random", "herding", "k_center"):
            log(f"coreset {method} IPC {ipc}")
            paths.append(coreset_set(method, ipc, coresets))
        for mim in (False, True):
            log(f"dm{' + mim4dd' if mim else ''} IPC {ipc}")
            paths.append(dm_set(ipc, mim, runs))
    rows = compare(paths)
    for row in rows:  # name the files relative to the repository in docs/
        path = Path(row["file"]).resolve()
        row["file"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    (out / "table1.md").write_text(format_compare(rows) + "\n")
    (out / "table1.json").write_text(format_compare(rows, "json") + "\n")


def _evaluate(path: Path, ref: dict, key: str) -> dict:
    from mim4dd_kit.api import EvaluatorRef
    from mim4dd_kit.run.evaluate import evaluate

    res = evaluate(path, evaluators=[EvaluatorRef.model_validate(ref)], device="cpu")
    return res["evaluations"][key]


def cka(out: Path, runs: Path) -> None:
    for mim in (False, True):
        tag = "dm_mim" if mim else "dm"
        log(f"cka {tag}")
        target = out / f"cka_{tag}"
        target.mkdir(parents=True, exist_ok=True)
        result = _evaluate(dm_set(10, mim, runs),
                           {"name": "cka", "backbone": {"name": "convnet", "width": WIDTH},
                            "real_epochs": 5, "epochs": 300, "probe": 1000,
                            "out_dir": str(target)}, "cka")
        (out / f"cka_{tag}.json").write_text(json.dumps(result, indent=2))


def cross_arch(out: Path, runs: Path) -> None:
    lines = []
    for mim in (False, True):
        tag = "DM + MIM4DD" if mim else "DM"
        log(f"cross_arch {tag}")
        result = _evaluate(dm_set(10, mim, runs),
                           {"name": "cross_arch", "models": 2, "epochs": 300}, "cross_arch")
        lines += [f"## {tag}, IPC 10", "", result["markdown"], ""]
        if result.get("skipped"):
            lines += [f"skipped: {result['skipped']}", ""]
    (out / "cross_arch.md").write_text("\n".join(lines))


def mi(out: Path, runs: Path) -> None:
    lines = ["| set (IPC 10) | " + " | ".join(f"layer {k}" for k in (1, 2, 3)) + " |",
             "|---|---|---|---|"]
    for mim in (False, True):
        tag = "DM + MIM4DD" if mim else "DM"
        log(f"mi_estimate {tag}")
        r = _evaluate(dm_set(10, mim, runs),
                      {"name": "mi_estimate", "backbone": {"name": "convnet", "width": WIDTH},
                       "epochs": 300}, "mi_estimate")
        lines.append(f"| {tag} | " + " | ".join(f"{v:.3f}" for v in r["mi_lower_bound"]) + " |")
        limit = r.get("upper_limit")
    lines += ["", f"nats; ceiling of the bound: {limit}"]
    (out / "mi_estimate.md").write_text("\n".join(lines) + "\n")


def pictures(out: Path, runs: Path) -> None:
    from mim4dd_kit.analysis.report import export_grid
    from mim4dd_kit.core import plots

    for mim in (False, True):
        tag = "dm_mim" if mim else "dm"
        path = dm_set(10, mim, runs)
        export_grid(path, out / f"grid_{tag}.png")
        plots.save_loss_curves(plots.read_history(path.parent / "losses.jsonl"),
                               out / f"loss_curves_{tag}.png",
                               title=f"Fashion-MNIST IPC 10, {tag.replace('_', ' + ')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "analysis")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "compare")
    ap.add_argument("--coresets", type=Path, default=ROOT / "runs" / "coresets")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=PARTS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.coresets.mkdir(parents=True, exist_ok=True)
    steps = {"table1": lambda: table1(args.out, args.runs, args.coresets),
             "cka": lambda: cka(args.out, args.runs),
             "cross_arch": lambda: cross_arch(args.out, args.runs),
             "mi": lambda: mi(args.out, args.runs),
             "pictures": lambda: pictures(args.out, args.runs)}
    for part in args.only:
        t0 = time.perf_counter()
        steps[part]()
        log(f"{part} done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
