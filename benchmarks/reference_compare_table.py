"""Tabulate the outputs of ``benchmarks/reference_compare.sh`` as Markdown.

    .venv/bin/python benchmarks/reference_compare_table.py /work/refs/out/dm_ipc1 ...

For each folder (one method and IPC): the accuracy of every set under ``mdk evaluate``,
the reference's own evaluator on the sets it scored, seconds per image update and peak
memory (max RSS of ``/usr/bin/time -v``) of each side's distillation process.

Seconds per update: the reference prints a clock time (1 s resolution) when training
begins and every 10th outer iteration; the rate is the time from "training begins" to the
last print over the outer iterations between them, times the image updates per outer
iteration. The toolkit's is the run's ``run_seconds`` (set-up, loop and final save; the
set-up loads the data set) over its image updates, so it is, if anything, an overestimate.
CPU seconds are user + system time of the whole distillation process(es) of all seeds
(one reference process runs every seed; one ``mdk run`` per seed), data loading included.

A folder written with ``SAME_INIT=1`` (``dsa_ipc<N>_sameinit``: one reference process per
seed, ``ref_s<seed>.log`` / ``.time``, both sides from the same starting images) is read
the same way, peak memory being the largest of the seeds' processes; below the table the
paired differences (reference minus toolkit, seed by seed, under ``mdk evaluate``) are
printed, with the starting images' own accuracy when ``eval/init_s<seed>.mdk.json`` is
there.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from datetime import datetime
from pathlib import Path

from mim4dd_kit.io.synthetic import load_synthetic

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] (training begins|iter = (\d+))")
#: CAFE's distill.py logs through `logging` ("<time>: <message>"); the side-by-side copy
#: logs the image updates each network served
CAFE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d): (?:\[[^]]*\] (training begins)|"
                  r"side-by-side: iteration \d+: (\d+) image updates)")


def _t(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def cafe_rate(lines: list[str]) -> list[float]:
    """Seconds per image update of a CAFE distill.py run (one experiment): from "training
    begins" to the last network's line, over the image updates the networks logged."""
    begin, last, updates = None, None, 0
    for line in lines:
        m = CAFE.match(line)
        if m and m.group(2):
            begin = _t(m.group(1))
        elif m:
            last, updates = _t(m.group(1)), updates + int(m.group(3))
    if begin is None or last is None or not updates:
        return []
    return [(last - begin).total_seconds() / updates]


def reference_rates(log: Path, updates_per_outer: int) -> list[float]:
    """Seconds per image update of each experiment in a main.py / main_DM.py log (or a
    CAFE distill.py log)."""
    lines = log.read_text(errors="replace").splitlines()
    if any(CAFE.match(ln) for ln in lines[:40]):
        return cafe_rate(lines)
    rates, begin, last = [], None, None
    for line in lines:
        m = STAMP.match(line)
        if not m:
            continue
        if m.group(2) == "training begins":
            if begin is not None and last is not None:
                rates.append(_rate(begin, last, updates_per_outer))
            begin, last = _t(m.group(1)), None
        else:
            last = (_t(m.group(1)), int(m.group(3)))
    if begin is not None and last is not None:
        rates.append(_rate(begin, last, updates_per_outer))
    return rates


def _rate(begin: datetime, last: tuple[datetime, int], per_outer: int) -> float:
    when, it = last
    return (when - begin).total_seconds() / ((it + 1) * per_outer)


def max_rss_mib(time_file: Path) -> float | None:
    if not time_file.is_file():
        return None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(m.group(1)) / 1024 if m else None


def cpu_seconds(time_file: Path) -> float | None:
    """User + system CPU seconds of a process (``/usr/bin/time -v``); less sensitive to
    other load on the machine than wall time."""
    if not time_file.is_file():
        return None
    text = time_file.read_text()
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return float(user.group(1)) + float(system.group(1)) if user and system else None


def _acc(path: Path) -> tuple[float, float, list[float]] | None:
    if not path.is_file() or not path.stat().st_size:
        return None
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # the reference's prints before the JSON line
        lines = [ln for ln in text.splitlines() if ln.startswith('{"')]
        if not lines:
            return None
        data = json.loads(lines[-1])
    ev = data["evaluations"]["train_from_scratch"] if "evaluations" in data else data
    return ev["accuracy_mean"], ev["accuracy_std"], ev["accuracies"]


def _fmt(a) -> str:
    return "—" if a is None else f"{a[0]:.2f} ± {a[1]:.2f}"


def _across(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def summarise(d: Path) -> dict:
    method, ipc = d.name.split("_ipc")
    ipc = ipc.removesuffix("_sameinit")
    sets = sorted((d / "sets").glob("*.safetensors"))
    rows = {}
    for f in sets:
        name = f.stem
        rows[name] = {"mdk": _acc(d / "eval" / f"{name}.mdk.json"),
                      "ref": _acc(d / "eval" / f"{name}.ref.json")}
    per_outer = 10 if (method == "dsa" and ipc == "10") else 1
    mdk_rates, mdk_iters = [], []
    for run in sorted(d.glob("mdk_s*/synthetic.safetensors")):
        meta = load_synthetic(run).metadata
        mdk_iters.append(meta["iterations"])
        mdk_rates.append(meta["run_seconds"] / meta["iterations"])
    mdk_rss = [r for r in (max_rss_mib(t) for t in sorted(d.glob("mdk_s*.time"))) if r]
    mdk_cpu = [c for c in (cpu_seconds(t) for t in sorted(d.glob("mdk_s*.time"))) if c]
    ref_logs = sorted(d.glob("ref.log")) + sorted(d.glob("ref_s*.log"))
    ref_times = sorted(d.glob("ref.time")) + sorted(d.glob("ref_s*.time"))
    ref_rss = [r for r in (max_rss_mib(t) for t in ref_times) if r]
    ref_cpu = [c for c in (cpu_seconds(t) for t in ref_times) if c]
    paired = []
    for k in range(len(mdk_rates)):
        a, b = rows.get(f"ref_exp{k}", {}).get("mdk"), rows.get(f"mdk_exp{k}", {}).get("mdk")
        start = _acc(d / "eval" / f"init_s{k}.mdk.json")
        if a and b:
            paired.append({"seed": k, "ref": a[0], "mdk": b[0], "diff": a[0] - b[0],
                           "start": start[0] if start else None})
    return {
        "method": method, "ipc": int(ipc), "rows": rows,
        # per seed when they differ (CAFE: each seed runs its reference's count)
        "updates": (f"{min(mdk_iters)}–{max(mdk_iters)}" if len(set(mdk_iters)) > 1
                    else mdk_iters[0] if mdk_iters else None),
        "same_init": d.name.endswith("_sameinit"),
        "ref_rates": [r for log in ref_logs for r in reference_rates(log, per_outer)],
        "mdk_rates": mdk_rates, "ref_rss": max(ref_rss) if ref_rss else None,
        "mdk_rss": max(mdk_rss) if mdk_rss else None,
        "ref_cpu": sum(ref_cpu) if ref_cpu else None,
        "mdk_cpu": sum(mdk_cpu) if mdk_cpu else None,
        "paired": paired,
    }


def markdown(summaries: list[dict]) -> str:
    out = ["| method | IPC | updates | side | sets | `mdk evaluate` per set (%) | "
           "across seeds | reference evaluator (%) | s / update | CPU s, all seeds | "
           "peak RSS (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for side, label in (("ref", "reference"), ("mdk", "mim4dd_kit")):
            rates, rss, cpu = s[f"{side}_rates"], s[f"{side}_rss"], s[f"{side}_cpu"]
            names = [n for n in s["rows"] if n.startswith(side + "_")]
            mdk = [s["rows"][n]["mdk"] for n in names]
            ref = [(n, s["rows"][n]["ref"]) for n in names if s["rows"][n]["ref"]]
            out.append(
                f"| {s['method']} | {s['ipc']} | {s['updates']} | {label} | {len(names)} | "
                + "; ".join(_fmt(a) for a in mdk) + " | "
                + _across([a[0] for a in mdk if a]) + " | "
                + ("; ".join(f"{n.split('_')[1]}: {_fmt(a)}" for n, a in ref) or "—") + " | "
                + (", ".join(f"{r:.2f}" for r in rates) or "—") + " | "
                + ("—" if cpu is None else f"{cpu:.0f}") + " | "
                + ("—" if rss is None else f"{rss:.0f}") + " |")
    for s in summaries:
        if not (s["same_init"] and s["paired"]):
            continue
        diffs = [p["diff"] for p in s["paired"]]
        out.append("")
        out.append(f"{s['method']} IPC {s['ipc']}, same starting images, reference minus "
                   "toolkit under `mdk evaluate`: "
                   + "; ".join(f"seed {p['seed']}: {p['ref']:.2f} - {p['mdk']:.2f} = "
                               f"{p['diff']:+.2f}"
                               + ("" if p["start"] is None else f" (start {p['start']:.2f})")
                               for p in s["paired"])
                   + f"; mean {statistics.mean(diffs):+.2f}"
                   + (f" ± {statistics.pstdev(diffs):.2f} (population std over seeds)"
                      if len(diffs) > 1 else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="outputs of reference_compare.sh")
    ap.add_argument("--json", action="store_true", help="print JSON instead")
    a = ap.parse_args()
    summaries = [summarise(d) for d in a.dirs]
    print(json.dumps(summaries, indent=1) if a.json else markdown(summaries))


if __name__ == "__main__":
    main()
