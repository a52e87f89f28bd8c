"""docs/mim_study.md from the study's rows, curves and run folders (``mim_study.py page``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

S: Any = None  # the mim_study module, set by render()


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cells(rows: list[dict]) -> list[tuple[str, int, str]]:
    order = {d: i for i, d in enumerate(S.DATASETS)}
    cells = {(r["dataset"], r["ipc"], r["method"]) for r in rows}
    return sorted(cells, key=lambda c: (order.get(c[0], 99), c[1], c[2]))


def _over_seeds(rows: list[dict], cell: tuple, variant: str, split: str) -> dict | None:
    import numpy as np

    vals = [r for r in rows if (r["dataset"], r["ipc"], r["method"]) == cell
            and r["variant"] == variant and r["split"] == split]
    if not vals:
        return None
    m = np.array([r["mean"] for r in vals])
    return {"n": len(m), "mean": float(m.mean()),
            "std": float(m.std(ddof=1)) if len(m) > 1 else None,
            "iterations": sorted({r["iterations"] for r in vals})}


def _cell_text(stat: dict | None) -> str:
    if stat is None:
        return "—"
    sd = f" ± {stat['std']:.2f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.2f}{sd} (n={stat['n']})"


def _diff_text(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] (n={d['n']})"


def _verdict(d: dict | None) -> str:
    if d is None:
        return ""
    if d["lo"] > 0:
        return "helps"
    if d["hi"] < 0:
        return "hurts"
    return "no detectable difference" if d["mean"] >= -0.5 else "worse, interval contains 0"


def _shape(curve: dict) -> str:
    """A word on the curve around the chosen budget."""
    chosen = curve.get("chosen")
    if chosen is None:
        return "running"
    pts = sorted(curve["points"], key=lambda p: p["iteration"])
    at = next(p["mean"] for p in pts if p["iteration"] == chosen)
    moved = [p["mean"] - pts[0]["mean"] for p in pts]
    if max(map(abs, moved)) < 2 * S.FLAT_POINTS:  # slow, not settled: the set barely moves
        return (f"barely moves from its start: {moved[-1]:+.2f} over the whole curve (slow, "
                "not settled)")
    later = [p["mean"] for p in pts if p["iteration"] > chosen]
    if not later:
        before = [p["mean"] for p in pts if 0 < p["iteration"] < chosen]
        if before and at - before[-1] >= S.FLAT_POINTS:
            return "still rising at the largest milestone"
        return "flat at the largest milestone"
    if min(later) <= at - S.FLAT_POINTS:
        return f"peaks here; later milestones fall to {min(later):.2f}"
    return "flat after it"


def _diagnostics(cell: tuple, variant: str) -> dict | None:
    """Median ‖∇R‖/‖∇L_DD‖ on the images, pixel std end/start, and the mean MI bound
    (Eq. 2.14, nats, over layers) at the first and last logged iteration, over seeds."""
    import numpy as np

    dataset, ipc, method = cell
    ratios, growth, mi_first, mi_last = [], [], [], []
    for f in sorted((S.OUT / dataset / f"ipc{ipc}" / method / variant).glob("seed*/losses.jsonl")):
        hist = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        logged = [h for h in hist if "grad_ratio" in h]
        if not logged:
            continue
        ratios += [h["grad_ratio"] for h in logged]
        growth.append(logged[-1]["img_std"] / logged[0]["img_std"])
        mis = [[v for k, v in h.items() if k.startswith("mi") and k[2:].isdigit()]
               for h in (logged[0], logged[-1])]
        mi_first.append(float(np.mean(mis[0])))
        mi_last.append(float(np.mean(mis[1])))
    if not ratios:
        return None
    return {"ratio": float(np.median(ratios)), "growth": float(np.mean(growth)),
            "mi_first": float(np.mean(mi_first)), "mi_last": float(np.mean(mi_last)),
            "seeds": len(growth)}


def _curves_figure(out: Path) -> list[dict[str, Any]]:
    curves = []
    for f in sorted((S.OUT / "curves").glob("*/curve.json")):
        c = S.read_json(f)
        if c and c.get("points"):
            curves.append({"name": f.parent.name, **c})
    if not curves:
        return curves
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for c in curves:
        pts = sorted(c["points"], key=lambda p: p["iteration"])
        xs = [max(p["iteration"], 1) for p in pts]
        ax.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] for p in pts],
                    marker="o", capsize=2, label=c["name"])
        if c.get("chosen") is not None:
            y = next(p["mean"] for p in pts if p["iteration"] == c["chosen"])
            ax.plot([c["chosen"]], [y], "k*", markersize=12)
    ax.set_xscale("log")
    ax.set_xlabel("distillation iterations (0 drawn at 1)")
    ax.set_ylabel("validation accuracy (%), 5 networks")
    ax.set_title("base methods, seed 0: accuracy vs iterations (star: chosen budget)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "budget_curves.png", dpi=110)
    plt.close(fig)
    return curves


def _loss_figure(cell: tuple, variants: list[str], out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dataset, ipc, method = cell
    series: dict[str, dict[str, list]] = {}
    for v in variants:
        for seed_dir in sorted((S.OUT / dataset / f"ipc{ipc}" / method / v).glob("seed*")):
            f = seed_dir / "losses.jsonl"
            if not f.exists():
                continue
            hist = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for key in ("loss_dd", "loss_reg"):
                if hist and key in hist[0]:
                    series.setdefault(f"{v}:{key}", {}).setdefault("runs", []).append(
                        [h[key] for h in hist])
    if not series:
        return None
    keys = sorted({k.split(":")[1] for k in series})
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, s in sorted(series.items()):
            if not name.endswith(key):
                continue
            n = min(len(r) for r in s["runs"])
            arr = np.array([r[:n] for r in s["runs"]])
            x = np.arange(1, n + 1)
            v = name.split(":")[0]
            ax.plot(x, arr.mean(0), color=colours[v], label=f"{v} (mean of {len(arr)} seeds)")
            ax.fill_between(x, arr.min(0), arr.max(0), color=colours[v], alpha=0.2)
        ax.set_yscale("symlog")
        ax.set_xlabel("iteration")
        ax.set_title(f"{key}: {dataset} IPC {ipc} {method}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"losses_{dataset}_ipc{ipc}_{method}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def _shipped_check(S, chosen: str) -> str:
    """Whether the toolkit's default ``mim4dd`` settings are those of the runs the
    ``shipped`` column holds: the chosen candidate on every base method (its
    ``network_gradient`` aside, which changes nothing there) and, on MTT and BPTT, the
    variant :func:`shipped_variant` names."""
    shipped = S.regularizer_params({"name": "mim4dd"})
    unrolled = S.shipped_variant(chosen, S.UNROLLED[0])

    def differ(name: str, ignored: set[str]) -> list[str] | None:
        if name not in S.CANDIDATES:
            return None
        cand = S.regularizer_params(S.CANDIDATES[name])
        return sorted(k for k in set(shipped) | set(cand)
                      if k not in ignored and shipped.get(k) != cand.get(k))

    if unrolled == chosen:
        checks = [(chosen, "every base method", differ(chosen, {"preset"}))]
    else:
        checks = [(chosen, "DM, DSA and the other bases without an unrolled network",
                   differ(chosen, {"preset", "network_gradient"})),
                  (unrolled, "MTT and BPTT", differ(unrolled, {"preset"}))]
    out = [f"The toolkit's default `mim4dd` is preset `{shipped['preset']}`, what the "
           "`*_mim` recipes use."]
    for name, where, keys in checks:
        out.append(f"On {where} the `shipped` column holds `{name}`: "
                   + ("not a candidate of this study." if keys is None
                      else "the default has every parameter of it." if not keys
                      else f"the default differs from it in {', '.join(keys)}."))
    return " ".join(out)


def _extra_seeds(rows: list[dict]) -> str:
    """``; digits IPC 1 dsa also 3-9``: cells run on more seeds than the study's own."""
    extra: dict[tuple, set] = {}
    for r in rows:
        if r["seed"] not in S.SEEDS:
            extra.setdefault((r["dataset"], r["ipc"], r["method"]), set()).add(r["seed"])
    return "".join(f"; {d} IPC {i} {m} also {min(v)}–{max(v)}"
                   for (d, i, m), v in sorted(extra.items()))


def render(rows: list[dict[str, Any]], study: Any) -> Path:
    global S
    S = study
    out_figs = S.FIGS
    out_figs.mkdir(parents=True, exist_ok=True)
    curves = _curves_figure(out_figs)
    cells = _cells(rows)
    choice = S.read_json(S.OUT / "choice.json")
    pairing = S.read_json(S.OUT / "pairing.json", []) or []
    variants_test = ["literal", "shipped"]
    cand = sorted({r["variant"] for r in rows if r["split"] == "validation"
                   and r["variant"] not in ("base",)})

    cpu = sum((r.get("distill_cpu_seconds") or 0) for r in rows if r["split"] == "validation")
    cpu += sum((r.get("test_cpu_seconds") or 0) for r in rows
               if r["split"] == "test" and r["variant"] != "shipped")
    cpu += sum(c.get("cpu_seconds", 0.0) for c in curves)
    wall = sum((r.get("distill_wall_seconds") or 0) for r in rows
               if r["split"] == "validation")

    L: list[str] = []
    add = L.append
    add("# MIM4DD study: paired runs, base method vs base + MIM4DD")
    add("")
    add("Generated by `python benchmarks/mim_study.py page` from "
        "`docs/results/mim_study.json` and the run folders under `runs/study/` "
        "(`python benchmarks/mim_study.py run` makes them; it is resumable). Machine: a "
        "2-core x86_64 CPU shared with other work, no GPU, torch 2.14.1, one thread per "
        "process (`OMP_NUM_THREADS=1`).")
    add("")
    add("## Protocol")
    add("")
    add("- **Cells**: data set × IPC × base method. In each cell every variant runs with the "
        f"same distillation seeds ({', '.join(map(str, S.SEEDS))}"
        + _extra_seeds(rows) + "). Variants: `base` (no "
        "regularizer), `literal` (the paper's Eq. 2.15–2.17 read literally, `preset: "
        "literal`: λ 0.8, β 2, τ 0.07, one linear critic of 128 outputs — what the `*_mim` "
        "recipes shipped before this study), `shipped` (the setting chosen on the "
        "validation split, scored on the test split; the `*_mim` recipes and the "
        "regularizer's defaults now use it) and the candidates it was chosen from "
        "(`benchmarks/mim_study.py`, `candidates()`). The candidates are screened on "
        f"{' '.join(map(str, S.SCREEN_CELL))} first; those gaining at least "
        f"{S.SCREEN_POINTS} points there go on to the other choosing cells.")
    add("- **MTT**: not run on digits. Its ~1,100 training images make an expert epoch about "
        "4 SGD steps, far shorter than MTT's 50 student steps; the base method diverges "
        "there at the recipe's settings (image lr 1,000 and 100: the learned lr turns "
        "negative within 20 iterations and the evaluation refuses it; image lr 10: the lr "
        "falls to 0 and the set scores 10–13%). MTT runs on Fashion-MNIST instead.")
    add("- **Pairing**: the same seed gives the same initial images, real batches and "
        "networks with and without the regularizer (the engine builds it on an isolated "
        "random stream); checked below and in `tests/regularizers/test_pairing.py`. The "
        "evaluation networks of a run are seeded by the run's seed, so they are paired too.")
    add("- **Validation split**: every run holds out the same training images "
        "(`validation: {per_class: N, seed: " + str(S.VALIDATION_SEED) + "}`; digits N = "
        f"{S.DATASETS['digits']['per_class']}, Fashion-MNIST N = "
        f"{S.DATASETS['fashion_mnist']['per_class']}), never seen by distillation. Budgets "
        "and candidate settings are chosen on it; the test split scores only `base`, "
        "`literal` and the chosen setting.")
    add(f"- **Budget** (the same for every variant of a cell): {S.budget_text('dm')}; "
        "each method's own image lr, momentum and loops from the shipped Fashion-MNIST "
        "recipes; iterations per cell from the curve below. Digits uses the same "
        "recipes with the `digits` data set (8×8 images, 360-image test split). Method "
        "knobs changed for the CPU: " + "; ".join(
            f"{m} IPC {i}: {', '.join(v)}" for (m, i), v in S.METHOD_SETS.items() if v)
        + ".")
    add("- **Statistics**: a run's accuracy is the mean over its 5 evaluation networks. "
        "Per variant: mean ± std (ddof 1) over seeds. Paired difference variant − base per "
        "seed; its mean and the 95% t interval over seeds (`scipy.stats.t`, n − 1 degrees "
        "of freedom; with n = 3 the half-width is 2.48 × the std of the differences).")
    add("")
    add(f"Total CPU time so far: **{cpu / 3600:.2f} CPU hours** ({cpu:.0f} s: distillation "
        "with its validation scoring, test scoring, budget curves), "
        f"{wall / 3600:.2f} wall hours of distillation runs, on the shared CPU.")
    add("")

    add("## Settings as they ran")
    add("")
    add("Each variant's regularizer with every parameter as the plugin read it (presets "
        "expanded), and the commits the runs came from:")
    add("")
    seen: dict[str, set] = {}
    for r in rows:
        key = json.dumps(r.get("regularizer_params"), sort_keys=True)
        seen.setdefault(r["variant"], set()).add((key, r.get("code") or "unknown"))
    for v in sorted(seen):
        for key, code in sorted(seen[v]):
            add(f"- `{v}` (code {code}): `{key}`")
    add("")

    add("## Budgets: base accuracy vs iterations (validation split, seed 0)")
    add("")
    if curves:
        add("![budget curves](mim_study/budget_curves.png)")
        add("")
        add("| cell | iterations: validation accuracy (mean ± std over 5 networks) | "
            "chosen budget | shape |")
        add("|---|---|---|---|")
        for c in curves:
            pts = sorted(c["points"], key=lambda p: p["iteration"])
            text = ", ".join(f"{p['iteration']}: {p['mean']:.2f}±{p['std']:.2f}" for p in pts)
            add(f"| {c['name']} | {text} | {c.get('chosen', 'running')} | {_shape(c)} |")
        add("")
        add(f"Rule: the first milestone that no later milestone beats by {S.FLAT_POINTS} "
            "points or more (the largest milestone when the curve is still rising). Budget "
            "stated beside every number: " + S.budget_text("dm") + ".")
        add("")

    add("## Results on the test split")
    add("")
    add("Accuracy (%) mean ± std over seeds; paired difference variant − base with its "
        "95% t interval. Budget: " + S.budget_text("dm") + "; iterations per row.")
    add("")
    add("| data set | IPC | method | iterations | base | " +
        " | ".join(f"{v} | {v} − base [95% CI]" for v in variants_test) + " | verdict |")
    add("|---|---|---|---|---|" + "---|---|" * len(variants_test) + "---|")
    for cell in cells:
        base = _over_seeds(rows, cell, "base", "test")
        if base is None:
            continue
        parts = []
        verdicts = []
        for v in variants_test:
            stat = _over_seeds(rows, cell, v, "test")
            d = S.paired(rows, cell, v, "test")
            parts += [_cell_text(stat), _diff_text(d)]
            if d:
                verdicts.append(f"{v}: {_verdict(d)}")
        its = ",".join(map(str, base["iterations"]))
        add(f"| {cell[0]} | {cell[1]} | {cell[2]} | {its} | {_cell_text(base)} | "
            + " | ".join(parts) + f" | {'; '.join(verdicts)} |")
    add("")

    add("## Validation split (where settings are chosen)")
    add("")
    add("| data set | IPC | method | iterations | base | " +
        " | ".join(f"{v} − base [95% CI]" for v in cand) + " |")
    add("|---|---|---|---|---|" + "---|" * len(cand))
    for cell in cells:
        base = _over_seeds(rows, cell, "base", "validation")
        if base is None:
            continue
        its = ",".join(map(str, base["iterations"]))
        add(f"| {cell[0]} | {cell[1]} | {cell[2]} | {its} | {_cell_text(base)} | "
            + " | ".join(_diff_text(S.paired(rows, cell, v, "validation")) for v in cand)
            + " |")
    add("")
    if "placebo_rho0.001" in cand:
        add("`placebo_rho0.001` is not a candidate but a measuring stick: the shipped "
            "setting at a thousandth of its weight, which moves the images by a negligible "
            "amount, so its paired difference shows how far a cell's outcome moves from a "
            "tiny change of trajectory alone. Where it spreads by several points (a "
            "chaotic cell), a candidate's difference of that size says nothing about the "
            "regularizer; such a cell needs many more seeds than three.")
        add("")
    if choice:
        hurts = "; ".join(f"{k} hurts {', '.join(v)}"
                          for k, v in choice.get("hurts", {}).items() if v)
        picked = (f"**`{choice['chosen']}`**" if choice["chosen"]
                  else "**none** (every candidate hurts some cell)")
        add(f"Chosen on the validation split: {picked} ({choice['rule']}; "
            "scores " + ", ".join(f"{k} {v:+.2f}" for k, v in choice["score"].items())
            + (f"; out: {hurts}" if hurts else "")
            + (f"; not run on every choosing cell: {', '.join(choice['incomplete'])}"
               if choice.get("incomplete") else "")
            + f"; cells: {', '.join(choice['cells'])}).")
        if choice["chosen"]:
            add("")
            add(_shipped_check(S, choice["chosen"]))
    else:
        add("No candidate setting has been chosen yet: the `shipped` column stays empty "
            "until candidate settings have run on the validation split.")
    add("")

    add("## What the regularizer did (diagnostics logged every 10 iterations)")
    add("")
    add("Median over logged iterations and seeds of ‖∇_X R‖ / ‖∇_X L_DD‖ on the synthetic "
        "images (with ρ: the applied, rescaled gradient), the images' pixel std at the end "
        "over the start, and the mean over layers of the MI bound log(C−1) + E_P[log h] "
        "(Eq. 2.14, nats; log 9 = 2.20 for 10 classes) at the first and last logged "
        "iteration.")
    add("")
    add("| data set | IPC | method | variant | seeds | grad ratio | pixel std end/start | "
        "MI bound first → last |")
    add("|---|---|---|---|---|---|---|---|")
    for cell in cells:
        for v in ["literal", *[c for c in cand if c != "literal"]]:
            d = _diagnostics(cell, v)
            if d:
                add(f"| {cell[0]} | {cell[1]} | {cell[2]} | {v} | {d['seeds']} | "
                    f"{d['ratio']:.3g} | {d['growth']:.2f} | {d['mi_first']:.2f} → "
                    f"{d['mi_last']:.2f} |")
    add("")

    add("## Pairing check")
    add("")
    if pairing:
        add("Seed 0, the first iterations of base and variant traced (hashes of the "
            "initial images, every real batch drawn, every network built): ")
        add("")
        add("| data set | IPC | method | variant | iterations | same initial images | "
            "same real batches | same networks | same expert / start epoch draws | "
            "final images differ |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for c in pairing:
            batches = ("none drawn by the base" if c["same_batches"] is None
                       else f"{c['same_batches']} ({c['batches']})")
            add(f"| {c['dataset']} | {c['ipc']} | {c['method']} | {c['variant']} | "
                f"{c['steps']} | {c['same_init']} | {batches} | "
                f"{c['same_networks']} ({c['networks']}) | {c.get('same_draws', '—')} | "
                f"{c['different_final']} |")
        add("")
        add("MTT's base draws no real batch; with a regularizer its feature batches come "
            "from a stream of their own (seeded by the run seed and the iteration), so the "
            "expert and start-epoch draws, which decide the trajectory targets, stay the "
            "same.")
    else:
        add("Not run yet (`python benchmarks/mim_study.py verify`).")
    add("")

    add("## Loss curves")
    add("")
    add("L_DD (left) and the regularizer's weighted term (right) per iteration, mean over "
        "seeds with the min–max band, base and variants (symlog scale).")
    add("")
    for cell in cells:
        name = _loss_figure(cell, ["base", "literal", *[v for v in cand
                                                        if v not in ("literal",)]], out_figs)
        if name:
            add(f"![losses {cell}](mim_study/{name})")
            add("")

    add("## Every run")
    add("")
    add("| data set | IPC | method | variant | seed | split | iterations | accuracy (5 nets) |"
        " final losses |")
    add("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["dataset"], r["ipc"], r["method"], r["variant"],
                                         r["split"], r["seed"])):
        losses = ", ".join(f"{k} {v:.3g}" for k, v in (r.get("final_losses") or {}).items()
                           if k.startswith("loss"))
        add(f"| {r['dataset']} | {r['ipc']} | {r['method']} | {r['variant']} | {r['seed']} | "
            f"{r['split']} | {r['iterations']} | {r['mean']:.2f} ± {r['std']:.2f} | "
            f"{losses} |")
    add("")
    S.PAGE.write_text("\n".join(L), encoding="utf-8")
    return S.PAGE
