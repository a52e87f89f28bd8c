"""The MIM4DD study: paired runs of base methods with and without the regularizer.

A *cell* is (data set, IPC, method); each cell runs every variant (``base``: no
regularizer, ``literal``: the paper's literal objective, ``preset: literal``, and
candidate settings) for several distillation seeds. Runs with the same seed
start from the same images and draw the same real batches and networks (the engine builds
the regularizer on an isolated random stream; ``tests/regularizers/test_pairing.py``), so
the per-seed difference variant − base isolates the regularizer.

Every run holds out a validation split of the training set (``validation`` in the recipe,
the same images for every run of a data set) that distillation never sees. Budgets and
candidate settings are chosen on it; the test split scores only ``base``, ``literal`` and
the chosen setting (``shipped``).

    python benchmarks/mim_study.py run      # the queue, resumable; writes the JSON
    python benchmarks/mim_study.py score    # choose on validation; score it on test
    python benchmarks/mim_study.py page     # docs/mim_study.md from the JSON and the runs
    python benchmarks/mim_study.py status   # what is finished

``run`` first draws, per cell, the base method's validation accuracy against iterations
(seed 0) and picks the budget where it has flattened; then it runs the cell's variants and
seeds at that budget, each ``mdk run`` (the library call) into its own folder under
``runs/study/``. Finished runs are reused; an interrupted run resumes from its checkpoint.
Rows go to ``docs/results/mim_study.json`` after every run.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "study"
JSON = ROOT / "docs" / "results" / "mim_study.json"
PAGE = ROOT / "docs" / "mim_study.md"
FIGS = ROOT / "docs" / "mim_study"

#: the validation split's seed: fixed, independent of every run's seed
VALIDATION_SEED = 20261130
DATASETS: dict[str, dict[str, Any]] = {
    # digits: 1,437 training images (about 144 per class), 360 test images (20 %
    # stratified, split_seed 0 of the plugin, independent of the run seed)
    "digits": {"dataset": {"name": "digits"}, "per_class": 30},
    "fashion_mnist": {"dataset": {"name": "fashion_mnist"}, "per_class": 500},
}
#: the CPU budget every run shares (both columns of a comparison): ConvNet width 32,
#: depth 3, instance norm, for distillation and evaluation; 64 real images per class
WIDTH, BATCH_REAL = 32, 64
EVAL = {"name": "train_from_scratch", "models": 5, "epochs": 300}
#: iterations at which the base method's curve is measured (seed 0, validation split)
MILESTONES = {"dm": [0, 50, 100, 200, 400, 800], "dsa": [0, 25, 50, 100, 200, 400],
              "mtt": [0, 25, 50, 100, 200], "bptt": [0, 10, 25, 50, 100]}
#: the curve has flattened at the first milestone that no later one beats by this much
FLAT_POINTS = 0.5
#: a setting hurts a cell when its paired mean is below -HURT_POINTS and its interval
#: excludes 0
HURT_POINTS = 0.5
#: candidates are screened on this cell's validation split first (the cell with the most
#: room above its base: Fashion-MNIST IPC 1 DM); those gaining at least SCREEN_POINTS
#: there go on to the other choosing cells
SCREEN_CELL = ("fashion_mnist", 1, "dm")
SCREEN_POINTS = 0.5
#: the cells whose validation split chooses the shipped setting (every finalist must
#: have run on all of them): DM and DSA on digits at IPC 1 and 10, and the screening cell
CHOOSING_CELLS = [("digits", 1, "dm"), ("digits", 1, "dsa"), ("digits", 10, "dm"),
                  ("digits", 10, "dsa"), SCREEN_CELL]
#: method knobs for a CPU: MTT with 3 experts trained 6 epochs (one buffer per data set,
#: shared by both IPCs), start epochs up to 4 at IPC 10 (the recipe's 20 would need
#: 22-epoch experts); everything else as the shipped recipes
METHOD_SETS = {
    ("dm", 1): [], ("dm", 10): [], ("dsa", 1): [], ("dsa", 10): [],
    # BPTT: the reference's 150 inner steps, without gradient checkpointing (same values,
    # less arithmetic; the 8x8 / 28x28 unrolls fit in memory)
    ("bptt", 1): ["dd_loss.checkpoint=false"], ("bptt", 10): ["dd_loss.checkpoint=false"],
    ("mtt", 1): ["dd_loss.num_experts=3", "dd_loss.train_epochs=6"],
    ("mtt", 10): ["dd_loss.num_experts=3", "dd_loss.train_epochs=6",
                  "dd_loss.max_start_epoch=4"],
}
#: the paper's literal Eq. 2.15-2.17 (what the *_mim recipes shipped before critic_free)
LITERAL = {"name": "mim4dd", "lambda": 0.8, "beta": 2.0, "tau": 0.07,
           "critic": {"name": "linear", "out_dim": 128}}
SEEDS = [0, 1, 2]


# -- recipes ------------------------------------------------------------------------------
def mim4dd_fields() -> set[str]:
    from mim4dd_kit.config.registry import default_registry

    cls = default_registry().load("regularizers", "mim4dd")
    fields = set()
    for name, f in cls.Params.model_fields.items():
        fields.add(f.alias or name)
    return fields


def variant_regularizer(variant: str) -> dict[str, Any] | None:
    """The recipe's ``regularizer`` for a variant (None: the base method alone)."""
    if variant == "base":
        return None
    fields = mim4dd_fields()
    if variant == "literal":
        reg = copy.deepcopy(LITERAL)
        if "preset" in fields:  # the toolkit names the literal reading explicitly
            reg["preset"] = "literal"
        return reg
    if variant in CANDIDATES:
        return copy.deepcopy(CANDIDATES[variant])
    raise SystemExit(f"unknown variant {variant!r}")


#: candidate settings, chosen between on the validation split; filled in when the
#: regularizer offers them (see candidates())
CANDIDATES: dict[str, dict[str, Any]] = {}


def candidates() -> dict[str, dict[str, Any]]:
    """Settings to choose between on the validation split, where the toolkit has them.

    Every candidate spells out the fields that differ from the plugin's defaults, so a
    later change of a preset does not change what a candidate name means.
    """
    fields = mim4dd_fields()
    out: dict[str, dict[str, Any]] = {}
    if not {"preset", "rho", "center"} <= fields:
        return out
    stable = {"name": "mim4dd", "preset": "stable"}
    # the stable preset as first shipped (no centring): rho 0.1 and 0.3
    out["stable"] = {**stable, "center": False, "rho": 0.1}
    out["stable_rho0.3"] = {**stable, "center": False, "rho": 0.3}
    # with centred embeddings
    out["stable_center"] = {**stable, "center": True, "rho": 0.1}
    # no critic network (the paper's Table 2 "w.o network"): the scores compare the
    # centred, normalised per-channel means of the base method's own network directly,
    # a supervised contrastive term with nothing to train on networks that change
    # every iteration
    ident = {**stable, "critic": {"name": "identity"}, "center": True,
             "critic_warmup": 0, "critic_steps": 0}
    out["identity_rho0.3"] = {**ident, "rho": 0.3}
    out["identity_rho1"] = {**ident, "rho": 1.0}
    out["identity_rho3"] = {**ident, "rho": 3.0}
    # the same with one row per class on the synthetic side (its class mean): identical
    # to identity_rho1 at IPC 1; at IPC 10 it moves a class's mean only
    out["identity_classmean_rho1"] = {**ident, "rho": 1.0, "synthetic_side": "class_mean"}
    if "rho_window" in fields:
        # the same with the DD norm that rho multiplies capped by the median of the last
        # 9 norms (one outlying DD gradient, e.g. of one DSA network, no longer doubles
        # the step): at the median itself (w9), or at twice it (cap2: only outliers)
        out["identity_classmean_rho1_w9"] = {**out["identity_classmean_rho1"],
                                             "rho_window": 9, "rho_cap": 1.0}
        out["identity_classmean_rho1_cap2"] = {**out["identity_classmean_rho1"],
                                               "rho_window": 9, "rho_cap": 2.0}
    if "network_gradient" in fields and "rho_window" in fields:
        # MTT and BPTT: the shipped setting with the student / inner model taken as given
        # (the regularizer's gradient through one forward pass, not the unroll)
        out["identity_classmean_rho1_cap2_given"] = {
            **out["identity_classmean_rho1_cap2"], "network_gradient": False}
    # a placebo: the shipped setting at a thousandth of its weight moves the images by a
    # negligible amount, so its paired differences measure how far a cell's outcome
    # moves from a tiny change of trajectory alone (the cell's own noise floor)
    out["placebo_rho0.001"] = {**out["identity_classmean_rho1"], "rho": 0.001}
    return out


def recipe_dict(dataset: str, ipc: int, method: str, variant: str, seed: int,
                iterations: int) -> dict[str, Any]:
    from mim4dd_kit.config.recipe import apply_overrides, parse_yaml

    path = ROOT / "recipes" / f"fashion_mnist_ipc{ipc}_{method}.yaml"
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    data["name"] = f"study_{dataset}_ipc{ipc}_{method}_{variant}_s{seed}"
    data["seed"] = seed
    data["device"] = "cpu"
    data["dataset"] = copy.deepcopy(DATASETS[dataset]["dataset"])
    data["validation"] = {"per_class": DATASETS[dataset]["per_class"], "seed": VALIDATION_SEED}
    data["regularizer"] = variant_regularizer(variant)
    data["evaluators"] = [{**EVAL, "split": "validation"}]
    data = apply_overrides(data, [
        f"backbone.width={WIDTH}", f"synthetic.batch_real={BATCH_REAL}",
        f"synthetic.iterations={iterations}", "output.checkpoint_every=25",
        *METHOD_SETS[(method, ipc)],
    ])
    return data


def budget_text(method: str, ipc: int = 1) -> str:
    extra = ", ".join(s for s in METHOD_SETS.get((method, ipc), []))
    return (f"ConvNet width {WIDTH} (depth 3, instance norm) for distillation and "
            f"evaluation, {BATCH_REAL} real images per class"
            + (f", {extra}" if extra else "")
            + f"; evaluation {EVAL['models']} networks x {EVAL['epochs']} epochs with DSA")


# -- helpers ------------------------------------------------------------------------------
def atomic_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON through a temporary file of its own (two study processes on
    different cells may rewrite the rows file at the same moment)."""
    from mim4dd_kit.core.files import atomic_write

    text = json.dumps(obj, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def say(text: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{stamp}] {text}", flush=True)


def run_folder(dataset: str, ipc: int, method: str, variant: str, seed: int) -> Path:
    return OUT / dataset / f"ipc{ipc}" / method / variant / f"seed{seed}"


def curve_folder(dataset: str, ipc: int, method: str) -> Path:
    return OUT / "curves" / f"{dataset}_ipc{ipc}_{method}"


# -- the budget curve ---------------------------------------------------------------------
def choose_budget(points: list[dict[str, Any]]) -> int:
    """The first milestone that no later milestone beats by FLAT_POINTS or more."""
    pts = sorted(points, key=lambda p: p["iteration"])
    for i, p in enumerate(pts):
        if p["iteration"] == 0:
            continue
        later = [q["mean"] for q in pts[i + 1:]]
        if all(m - p["mean"] < FLAT_POINTS for m in later):
            return int(p["iteration"])
    return int(pts[-1]["iteration"])


def run_curve(dataset: str, ipc: int, method: str) -> int:
    """Seed-0 base run up to the largest milestone, its images scored on the validation
    split at every milestone; returns the chosen budget. Resumable."""
    import torch

    from mim4dd_kit.api import EvaluatorRef
    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.core.runtime import rng_state, set_rng_state
    from mim4dd_kit.run.engine import Run
    from mim4dd_kit.run.evaluate import run_evaluators

    folder = curve_folder(dataset, ipc, method)
    state_file = folder / "curve.json"
    state = read_json(state_file, {}) or {}
    if state.get("chosen") is not None:
        return int(state["chosen"])
    miles = MILESTONES[method]
    recipe = validate_recipe(recipe_dict(dataset, ipc, method, "base", 0, miles[-1]))
    reg = default_registry()
    folder.mkdir(parents=True, exist_ok=True)
    r = Run(recipe, folder, torch.device("cpu"), reg)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    r.setup()
    start = r.load_checkpoint() if r.checkpoint_path.exists() else 0
    points = [p for p in state.get("points", []) if p["iteration"] <= start]
    done = {p["iteration"] for p in points}
    ev = [EvaluatorRef.model_validate({**EVAL, "split": "validation"})]

    def score(it: int) -> None:
        if it in done:
            return
        saved = rng_state()  # the trajectory goes on as if nothing had been scored
        res = run_evaluators(ev, r.syn.images.detach(), r.syn.labels,
                             None if r.syn.lr is None else float(r.syn.lr.detach()), r.data,
                             device=torch.device("cpu"), seed=recipe.seed,
                             backbone=recipe.backbone, augmentation=recipe.augmentation,
                             registry=reg)["train_from_scratch"]
        set_rng_state(saved)
        points.append({"iteration": it, "accuracies": res["accuracies"],
                       "mean": res["accuracy_mean"], "std": res["accuracy_std"]})
        done.add(it)
        say(f"curve {dataset} ipc{ipc} {method}: iteration {it}: "
            f"{res['accuracy_mean']:.2f} (validation)")

    for it in range(start, miles[-1] + 1):
        if it in miles:
            score(it)
            r.save_checkpoint(it)
            atomic_json(state_file, {**state, "points": points,
                                     "cpu_seconds": state.get("cpu_seconds", 0.0)
                                     + time.process_time() - cpu0,
                                     "wall_seconds": state.get("wall_seconds", 0.0)
                                     + time.perf_counter() - wall0})
            state = read_json(state_file)
            cpu0, wall0 = time.process_time(), time.perf_counter()
        if it < miles[-1]:
            logs = r.step(it)
            r.history.append({"iteration": it + 1, **logs})
    chosen = choose_budget(points)
    r.write_logs()
    r.checkpoint_path.unlink(missing_ok=True)
    state = read_json(state_file)
    state.update({"points": sorted(points, key=lambda p: p["iteration"]), "chosen": chosen,
                  "rule": f"first milestone no later one beats by {FLAT_POINTS} points",
                  "budget": budget_text(method, ipc), "milestones": miles})
    atomic_json(state_file, state)
    say(f"curve {dataset} ipc{ipc} {method}: budget {chosen} iterations")
    return chosen


def regularizer_params(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """Every parameter of a ``regularizer`` entry as the installed plugin reads it (a
    preset expanded), so that a row says what ran even if a preset changes later."""
    if ref is None:
        return None
    from mim4dd_kit.config.registry import default_registry

    params = default_registry().validate("regularizers", ref)
    return json.loads(params.model_dump_json(by_alias=True))


def code_version() -> str:
    """The checkout's commit (and ``+dirty`` when tracked files differ from it)."""
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                "mim4dd_kit"], check=False).returncode != 0
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


CODE = {"version": None}


# -- one run ------------------------------------------------------------------------------
def run_cell(dataset: str, ipc: int, method: str, variant: str, seed: int,
             iterations: int) -> dict[str, Any]:
    """Distill (or reuse) one run; returns its cell.json record."""
    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.core.errors import CheckpointError
    from mim4dd_kit.run.engine import run

    folder = run_folder(dataset, ipc, method, variant, seed)
    record_file = folder / "cell.json"
    record = read_json(record_file)
    if record and record.get("iterations") == iterations and record.get("validation"):
        return record
    recipe = validate_recipe(recipe_dict(dataset, ipc, method, variant, seed, iterations))
    folder.mkdir(parents=True, exist_ok=True)
    has_ckpt = (folder / "checkpoint.safetensors").exists()
    log = (folder / "progress.log").open("a", encoding="utf-8")

    def progress(it: int, logs: dict[str, float]) -> None:
        if it % 25 == 0 or it == iterations:
            shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith("loss"))
            log.write(f"{time.strftime('%H:%M:%S', time.gmtime())} {it}/{iterations} "
                      f"{shown}\n")
            log.flush()

    say(f"run {dataset} ipc{ipc} {method} {variant} seed {seed}: {iterations} iterations"
        + (" (resuming)" if has_ckpt else ""))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        res = run(recipe, out=folder, resume=has_ckpt, overwrite=not has_ckpt,
                  progress=False, callbacks=[progress])
    except CheckpointError:  # made by another version of the recipe: start over
        log.write("checkpoint of another recipe; starting over\n")
        res = run(recipe, out=folder, overwrite=True, progress=False, callbacks=[progress])
    log.close()
    ev = res.evaluations["train_from_scratch"]
    record = {
        "dataset": dataset, "ipc": ipc, "method": method, "variant": variant, "seed": seed,
        "iterations": iterations, "regularizer": recipe.to_dict()["regularizer"],
        "regularizer_params": regularizer_params(recipe.to_dict()["regularizer"]),
        "code": CODE["version"],
        "validation": {"accuracies": ev["accuracies"], "mean": ev["accuracy_mean"],
                       "std": ev["accuracy_std"], "size": ev["test_size"],
                       "seconds": ev["seconds"]},
        "final_losses": res.final_losses,
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_json(record_file, record)
    say(f"  validation {ev['accuracy_mean']:.2f} ± {ev['accuracy_std']:.2f} "
        f"({record['wall_seconds']:.0f} s)")
    return record


def score_test(dataset: str, ipc: int, method: str, variant: str, seed: int) -> dict | None:
    """Score a finished run on the test split once (test.json in its folder)."""
    from mim4dd_kit.api import EvaluatorRef
    from mim4dd_kit.run.evaluate import evaluate

    folder = run_folder(dataset, ipc, method, variant, seed)
    out = folder / "test.json"
    if out.exists():
        return read_json(out)
    if not (folder / "cell.json").exists():
        return None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = evaluate(folder / "synthetic.safetensors",
                   evaluators=[EvaluatorRef.model_validate({**EVAL, "split": "test"})],
                   device="cpu")["evaluations"]["train_from_scratch"]
    record = {"accuracies": res["accuracies"], "mean": res["accuracy_mean"],
              "std": res["accuracy_std"], "size": res["test_size"], "split": res["split"],
              "cpu_seconds": time.process_time() - cpu0,
              "wall_seconds": time.perf_counter() - wall0}
    atomic_json(out, record)
    say(f"  test {dataset} ipc{ipc} {method} {variant} seed {seed}: "
        f"{record['mean']:.2f} ± {record['std']:.2f}")
    return record


# -- rows ---------------------------------------------------------------------------------
#: base methods that train the synthetic side's network on the synthetic set, where the
#: regularizer's ``network_gradient`` changes anything (elsewhere the runs are identical)
UNROLLED = ("mtt", "bptt")


@functools.cache
def default_takes_network_as_given() -> bool:
    """Whether the installed default ``mim4dd`` sets ``network_gradient`` false."""
    return regularizer_params({"name": "mim4dd"})["network_gradient"] is False


def shipped_variant(chosen: str, method: str) -> str:
    """The variant whose runs are labelled ``shipped`` in a cell of ``method``: the chosen
    setting as the installed default runs it there, i.e. its ``_given`` twin on MTT and
    BPTT when the default takes the trained network as given."""
    if method in UNROLLED and default_takes_network_as_given():
        return f"{chosen}_given"
    return chosen


def collect_rows() -> list[dict[str, Any]]:
    """Every finished run as JSON rows (one per split scored)."""
    rows = []
    choice = read_json(OUT / "choice.json", {}) or {}
    for cell in sorted(OUT.glob("*/ipc*/*/*/seed*/cell.json")):
        rec = read_json(cell)
        if not rec:
            continue
        base = {k: rec[k] for k in ("dataset", "ipc", "method", "variant", "seed",
                                    "iterations")}
        common = {"budget": budget_text(rec["method"], rec["ipc"]),
                  "regularizer": rec["regularizer"],
                  "regularizer_params": rec.get("regularizer_params"),
                  "code": rec.get("code"),
                  "final_losses": rec.get("final_losses"),
                  "distill_cpu_seconds": rec.get("cpu_seconds"),
                  "distill_wall_seconds": rec.get("wall_seconds")}
        v = rec["validation"]
        rows.append({**base, "split": "validation", "accuracies": v["accuracies"],
                     "mean": v["mean"], "std": v["std"], "split_size": v["size"], **common})
        test = read_json(cell.parent / "test.json")
        if test:
            variants = [rec["variant"]]
            if choice.get("chosen") and (shipped_variant(choice["chosen"], rec["method"])
                                         == rec["variant"]):
                variants.append("shipped")
            for name in variants:
                rows.append({**base, "variant": name, "split": "test",
                             "accuracies": test["accuracies"], "mean": test["mean"],
                             "std": test["std"], "split_size": test["size"],
                             **({"setting": rec["variant"]} if name == "shipped" else {}),
                             "test_cpu_seconds": test.get("cpu_seconds"), **common})
    return rows


def write_rows() -> list[dict[str, Any]]:
    rows = collect_rows()
    atomic_json(JSON, rows)
    return rows


# -- statistics ---------------------------------------------------------------------------
def paired(rows: list[dict], cell: tuple, variant: str, split: str) -> dict | None:
    """Per-seed difference variant − base of one cell: mean, std, 95% t interval."""
    import numpy as np
    from scipy import stats

    def means(v: str) -> dict[int, float]:
        return {r["seed"]: r["mean"] for r in rows
                if (r["dataset"], r["ipc"], r["method"]) == cell and r["variant"] == v
                and r["split"] == split}

    b, v = means("base"), means(variant)
    seeds = sorted(set(b) & set(v))
    if len(seeds) < 2:
        return None
    d = np.array([v[s] - b[s] for s in seeds])
    n = len(d)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": float(d.mean()), "sd": sd, "lo": float(d.mean()) - half,
            "hi": float(d.mean()) + half, "seeds": seeds}


def finalists(rows: list[dict]) -> list[str]:
    """Candidates that pass the screening cell: a mean paired validation gain of at least
    SCREEN_POINTS there. Only finalists go on to the other choosing cells."""
    out = []
    for c in sorted({r["variant"] for r in rows if r["variant"] in CANDIDATES
                     and not r["variant"].startswith("placebo")}):  # a measuring stick
        d = paired(rows, SCREEN_CELL, c, "validation")
        if d and d["mean"] >= SCREEN_POINTS:
            out.append(c)
    return out


def choose_setting(rows: list[dict]) -> dict[str, Any] | None:
    """The candidate to ship, chosen on the validation split of CHOOSING_CELLS (None while
    no finalist has run on all of them).

    Only finalists (see :func:`finalists`) with at least 2 paired seeds in every choosing
    cell are eligible. One that hurts a cell (paired mean below -HURT_POINTS with its 95%
    interval below 0, the issue's "never loses beyond noise" turned around) is out; of the
    rest, the largest mean over the choosing cells of the paired difference wins.
    """
    cands = finalists(rows)
    table = {}
    for c in cands:
        diffs = {cell: paired(rows, cell, c, "validation") for cell in CHOOSING_CELLS}
        table[c] = {f"{k[0]} ipc{k[1]} {k[2]}": d for k, d in diffs.items() if d}
    complete = [c for c in cands if len(table[c]) == len(CHOOSING_CELLS)]
    if not complete:
        return None
    score = {c: sum(d["mean"] for d in table[c].values()) / len(CHOOSING_CELLS)
             for c in complete}
    hurts = {c: sorted(k for k, d in table[c].items()
                       if d["mean"] < -HURT_POINTS and d["hi"] < 0) for c in cands}
    eligible = [c for c in complete if not hurts[c]]
    best = max(eligible, key=score.get) if eligible else None
    return {"chosen": best, "score": score, "hurts": hurts,
            "incomplete": [c for c in cands if c not in complete],
            "cells": [f"{k[0]} ipc{k[1]} {k[2]}" for k in CHOOSING_CELLS],
            "screening": {"cell": list(SCREEN_CELL), "min_gain": SCREEN_POINTS,
                          "finalists": cands},
            "rule": f"finalists (mean paired validation gain >= {SCREEN_POINTS} on "
                    f"{' '.join(map(str, SCREEN_CELL))}) that ran on every choosing cell "
                    "(>= 2 paired seeds each); out if the paired validation difference is "
                    f"below -{HURT_POINTS} points with its 95% interval below 0 in some "
                    "cell; of the rest, the largest mean over the choosing cells of the "
                    "paired validation difference (candidate - base)",
            "per_cell": table}


# -- the pairing check --------------------------------------------------------------------
def trace(dataset: str, ipc: int, method: str, variant: str, seed: int,
          steps: int) -> dict[str, Any]:
    """Hashes of what a run of the study reads: initial images, the real batches and the
    networks of its first ``steps`` iterations."""
    import hashlib

    import torch

    from mim4dd_kit.config.recipe import validate_recipe
    from mim4dd_kit.config.registry import default_registry
    from mim4dd_kit.run.engine import Run

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]

    recipe = validate_recipe(recipe_dict(dataset, ipc, method, variant, seed, steps))
    r = Run(recipe, OUT / "pairing" / variant, torch.device("cpu"), default_registry())
    r.setup()
    out = {"init": digest(r.syn.images), "batches": [], "networks": []}
    sample, make = r.data.sample_per_class, r.ctx.make_backbone

    def spy_sample(n, generator=None):
        x, y = sample(n, generator)
        out["batches"].append(digest(x))
        return x, y

    def spy_make():
        net = make()
        out["networks"].append(digest(torch.cat([p.reshape(-1) for p in net.parameters()])))
        return net

    r.data.sample_per_class, r.ctx.make_backbone = spy_sample, spy_make
    out["draws"] = []  # the loss's own random choices (MTT's expert and start epoch)
    for it in range(steps):
        logs = r.step(it)
        out["draws"].append([logs[k] for k in ("mtt_expert", "mtt_start_epoch") if k in logs])
    out["final"] = digest(r.syn.images)
    return out


def main_verify(args) -> None:
    """Base and every variant of each cell, seed 0, a few iterations: the same initial
    images, real batches and networks, different final images (pairing.json)."""
    import torch

    torch.set_num_threads(1)
    CANDIDATES.update(candidates())
    checks = read_json(OUT / "pairing.json", []) or []
    for dataset, ipc, method in cells_in_order(args):
        base = trace(dataset, ipc, method, "base", 0, args.steps)
        for variant in [v for v in args.variants if v != "base"]:
            other = trace(dataset, ipc, method, variant, 0, args.steps)
            check = {"dataset": dataset, "ipc": ipc, "method": method, "variant": variant,
                     "seed": 0, "steps": args.steps,
                     "same_init": base["init"] == other["init"],
                     # None: the base method draws no real batch of its own (MTT; the
                     # variant's feature batches come from an isolated stream)
                     "same_batches": (base["batches"] == other["batches"]
                                      if base["batches"] else None),
                     "same_draws": base["draws"] == other["draws"],
                     "batches": len(base["batches"]),
                     "same_networks": base["networks"] == other["networks"],
                     "networks": len(base["networks"]),
                     "different_final": base["final"] != other["final"]}
            checks = [c for c in checks if (c["dataset"], c["ipc"], c["method"],
                                            c["variant"]) != (dataset, ipc, method, variant)]
            checks.append(check)
            atomic_json(OUT / "pairing.json", checks)
            say(f"pairing {check}")


# -- the queue ----------------------------------------------------------------------------
def cells_in_order(args) -> list[tuple[str, int, str]]:
    return [(d, i, m) for d in args.datasets for i in args.ipc for m in args.methods]


def run_cells(cells: list[tuple[str, int, str]], variants: list[str], seeds: list[int],
              tested: set[str], fixed: int | None) -> None:
    """Curve, then every variant and seed of each cell; ``tested`` variants are also scored
    on the test split. One broken cell does not stop the others."""
    for dataset, ipc, method in cells:
        try:
            iterations = fixed or run_curve(dataset, ipc, method)
            for seed in seeds:
                for variant in variants:
                    run_cell(dataset, ipc, method, variant, seed, iterations)
                    if variant in tested:
                        score_test(dataset, ipc, method, variant, seed)
                    write_rows()
        except Exception:
            say(f"cell {dataset} ipc{ipc} {method} failed:\n{traceback.format_exc()}")


def main_run(args) -> None:
    """Stage 1: the selection data sets with every variant and candidate (validation);
    the choice; stage 2: the other data sets with base, literal and the chosen setting;
    finally the chosen setting's runs scored on the test split."""
    import torch

    torch.set_num_threads(1)
    CODE["version"] = code_version()
    CANDIDATES.update(candidates())
    if args.candidates is None:
        cands = []
    else:
        unknown = sorted(set(args.candidates) - set(CANDIDATES))
        if unknown:
            raise SystemExit(f"unknown candidates {unknown}; known: {sorted(CANDIDATES)}")
        cands = args.candidates or list(CANDIDATES)
    say(f"study: cells {cells_in_order(args)}; variants {args.variants}; candidates "
        f"{cands} chosen on {args.select_on} x {args.select_methods}; seeds {args.seeds}")
    select = [c for c in cells_in_order(args)
              if c[0] in args.select_on and c[2] in args.select_methods
              and (not args.select_cells or f"{c[0]}:{c[1]}:{c[2]}" in args.select_cells)]
    order = {d: i for i, d in enumerate(DATASETS)}
    # the cheap bases on every data set first, then MTT and BPTT
    rest = sorted((c for c in cells_in_order(args) if c not in select),
                  key=lambda c: (c[2] in ("mtt", "bptt"), order[c[0]], c[2] == "bptt", c[1]))
    run_cells(select, [*args.variants, *cands], args.seeds, {"base", "literal"},
              args.iterations)
    rows = write_rows()
    choice = choose_setting(rows) if cands else None
    if choice is not None:
        atomic_json(OUT / "choice.json", choice)
        say(f"chosen on the validation split: {choice['chosen']} ({choice['score']})")
    elif cands:
        (OUT / "choice.json").unlink(missing_ok=True)  # a stale choice must not label rows
    chosen = [choice["chosen"]] if choice and choice["chosen"] else []
    run_cells(rest, [*args.variants, *chosen], args.seeds, {"base", "literal", *chosen},
              args.iterations)
    if chosen:
        for dataset, ipc, method in select:
            for seed in args.seeds:
                score_test(dataset, ipc, method, chosen[0], seed)
                write_rows()
    write_rows()
    say("study: queue done")


def main_score(args) -> None:
    """Choose on the validation split from the runs so far (choice.json), then score base,
    literal and the chosen setting on the test split in every cell where the chosen
    setting has run."""
    import torch

    torch.set_num_threads(1)
    CANDIDATES.update(candidates())
    choice = choose_setting(collect_rows())
    if choice is None:
        (OUT / "choice.json").unlink(missing_ok=True)
        say("score: no finalist has run on every choosing cell yet")
        return
    atomic_json(OUT / "choice.json", choice)
    chosen = choice["chosen"]
    say(f"score: chosen on the validation split: {chosen} ({choice['score']})")
    if not chosen:
        return
    for record in sorted(OUT.glob("*/ipc*/*/*/seed*/cell.json")):
        rec = read_json(record)
        if rec is None or rec["variant"] != shipped_variant(chosen, rec["method"]):
            continue
        for variant in ("base", "literal", rec["variant"]):
            score_test(rec["dataset"], rec["ipc"], rec["method"], variant, rec["seed"])
    write_rows()


def main_status(args) -> None:
    rows = collect_rows()
    for r in rows:
        print(f"{r['dataset']:14s} ipc{r['ipc']:<3d} {r['method']:5s} {r['variant']:14s} "
              f"s{r['seed']} {r['split']:10s} {r['iterations']:5d} it  {r['mean']:.2f}")


def main() -> None:
    global OUT, JSON, PAGE, FIGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["run", "score", "page", "status", "verify"])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--methods", nargs="+", default=["dm", "dsa"], choices=list(MILESTONES))
    ap.add_argument("--variants", nargs="+", default=["base", "literal"])
    ap.add_argument("--candidates", nargs="*", metavar="NAME",
                    help="also run these candidate settings (none named: every one the "
                    "regularizer offers) on the --select-on data sets, and choose one on "
                    "the validation split")
    ap.add_argument("--select-on", nargs="+", default=["digits"],
                    help="data sets whose validation split chooses the setting")
    ap.add_argument("--select-methods", nargs="+", default=["dm", "dsa"],
                    help="base methods whose cells choose the setting")
    ap.add_argument("--select-cells", nargs="+", default=[],
                    help="restrict the choosing cells to these DATASET:IPC:METHOD")
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--iterations", type=int, help="skip the curve; use this budget")
    ap.add_argument("--steps", type=int, default=3, help="verify: iterations traced")
    ap.add_argument("--out", type=Path, default=OUT, help="runs folder")
    ap.add_argument("--json", type=Path, default=JSON, help="rows file")
    ap.add_argument("--page", type=Path, default=PAGE, help="page to write")
    args = ap.parse_args()
    OUT, JSON, PAGE = args.out, args.json, args.page
    FIGS = PAGE.parent / PAGE.stem
    if args.mode == "run":
        main_run(args)
    elif args.mode == "score":
        main_score(args)
    elif args.mode == "status":
        main_status(args)
    elif args.mode == "verify":
        main_verify(args)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from mim_study_page import render

        CANDIDATES.update(candidates())
        say(f"page written: {render(collect_rows(), sys.modules[__name__])}")


if __name__ == "__main__":
    main()
