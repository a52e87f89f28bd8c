"""Tabulate the outputs of ``benchmarks/reference_compare_mtt_bptt.sh`` as Markdown.

    .venv/bin/python benchmarks/reference_compare_table_mtt_bptt.py OUT/mtt_ipc1 OUT/bptt_ipc1

For each folder (one method and IPC) and side: the accuracy of every set under
``mdk evaluate --protocol METHOD``, the mean and population std of the seeds' means, the
reference's own evaluator on the sets it scored, the learned lr of each set (MTT), and
the wall seconds, CPU seconds and peak memory (max RSS) of each distillation process from
``/usr/bin/time -v`` (whole process: data loading included).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from mim4dd_kit.io.synthetic import load_synthetic


def _time_fields(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size"):
            out["rss_mib"] = int(line.rsplit(":", 1)[1]) / 1024
        elif line.startswith(("User time", "System time")):
            out["cpu"] = out.get("cpu", 0.0) + float(line.rsplit(":", 1)[1])
        elif line.startswith("Elapsed (wall clock) time"):
            t = line.split("): ", 1)[1].split(":")
            out["wall"] = sum(float(x) * 60 ** i for i, x in enumerate(reversed(t)))
    return out


def _acc(path: Path) -> tuple[float, float] | None:
    """(mean, std) in % from an ``mdk evaluate --json`` or reference-evaluator file."""
    if not path.is_file() or not path.read_text().strip():
        return None
    data = json.loads(path.read_text())
    if "evaluations" in data:
        data = data["evaluations"]["train_from_scratch"]
    return data["accuracy_mean"], data["accuracy_std"]


def rows(folder: Path) -> list[str]:
    method, ipc = re.match(r"(\w+?)_ipc(\d+)", folder.name).groups()
    out = []
    for side, label in (("ref", "reference"), ("mdk", "mim4dd_kit")):
        sets = sorted(folder.glob(f"sets/{side}_exp*.safetensors"))
        accs, cells, lrs, xeval, walls, cpus, rss = [], [], [], [], [], [], []
        for s in sets:
            k = s.stem.removeprefix(f"{side}_exp")
            a = _acc(folder / "eval" / f"{s.stem}.mdk.json")
            if a:
                accs.append(a[0])
                cells.append(f"{a[0]:.2f} ± {a[1]:.2f}")
            r = _acc(folder / "eval" / f"{s.stem}.ref.json")
            if r:
                xeval.append(f"s{k}: {r[0]:.2f} ± {r[1]:.2f}")
            lr = load_synthetic(s).lr
            if lr is not None:
                lrs.append(f"{lr:.5f}")
            t = _time_fields(folder / f"{side}_s{k}.time")
            if t:
                walls.append(f"{t['wall']:.0f}")
                cpus.append(f"{t['cpu']:.0f}")
                rss.append(f"{t['rss_mib']:.0f}")
        across = (f"{statistics.mean(accs):.2f} ± {statistics.pstdev(accs):.2f}"
                  if accs else "")
        out.append(f"| {method} | {ipc} | {label} | {len(sets)} | {'; '.join(cells)} | "
                   f"{across} | {'; '.join(xeval)} | {', '.join(lrs) or '—'} | "
                   f"{', '.join(walls)} | {', '.join(cpus)} | {', '.join(rss)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", type=Path, nargs="+")
    a = ap.parse_args()
    print("| method | IPC | side | sets | `mdk evaluate` per set (%) | across seeds | "
          "reference evaluator (%) | learned lr | wall s | CPU s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in a.folders:
        for r in rows(f):
            print(r)


if __name__ == "__main__":
    main()
