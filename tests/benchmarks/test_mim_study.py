"""The MIM4DD study's decision rules (benchmarks/mim_study.py): the paired interval every
claim rests on, the budget read off a base method's curve, the choice of the shipped
setting on the validation split, and which runs the "shipped" label names."""

from __future__ import annotations

import math

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def study():
    return load_benchmark("mim_study")


def _row(cell, variant, seed, mean, split="validation"):
    dataset, ipc, method = cell
    return {"dataset": dataset, "ipc": ipc, "method": method, "variant": variant,
            "seed": seed, "split": split, "mean": mean}


CELL = ("fashion_mnist", 10, "dsa")


def test_paired_difference_is_a_t_interval_over_the_seeds_both_variants_ran(study):
    rows = [_row(CELL, "base", s, m) for s, m in [(0, 70.0), (1, 71.0), (2, 72.0), (3, 60.0)]]
    rows += [_row(CELL, "x", s, m) for s, m in [(0, 71.0), (1, 73.0), (2, 75.0)]]
    rows += [_row(CELL, "x", 0, 0.0, split="test"),  # another split: ignored
             _row(("digits", 10, "dsa"), "x", 1, 0.0)]  # another cell: ignored
    d = study.paired(rows, CELL, "x", "validation")
    # differences 1, 2, 3 (seed 3 has no "x" run): mean 2, std 1, t(0.975, 2) = 4.3027
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(2.0) and d["sd"] == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)
    assert d["lo"] == pytest.approx(2.0 - half) and d["hi"] == pytest.approx(2.0 + half)


def test_paired_difference_needs_two_paired_seeds(study):
    rows = [_row(CELL, "base", 0, 70.0), _row(CELL, "base", 1, 71.0), _row(CELL, "x", 0, 72.0)]
    assert study.paired(rows, CELL, "x", "validation") is None


def test_budget_is_the_first_milestone_no_later_one_beats_by_half_a_point(study):
    flat = [{"iteration": i, "mean": m} for i, m in
            [(0, 50.0), (50, 60.0), (100, 60.3), (200, 60.4)]]
    assert study.choose_budget(flat) == 50
    # the Fashion-MNIST IPC 10 DSA curve: still rising, so the largest milestone
    rising = [{"iteration": i, "mean": m} for i, m in
              [(0, 74.95), (25, 75.92), (50, 76.66), (100, 77.21), (200, 78.28), (400, 79.18)]]
    assert study.choose_budget(rising) == 400
    # iteration 0 (the starting images) is never the budget, even when nothing beats it
    assert study.choose_budget([{"iteration": 0, "mean": 80.0},
                                {"iteration": 25, "mean": 79.0}]) == 25


def test_shipped_label_names_the_taken_as_given_runs_on_unrolled_methods_only(study):
    # the installed default (critic_free) takes the trained network as given
    assert study.default_takes_network_as_given() is True
    assert study.shipped_variant("c", "mtt") == "c_given"
    assert study.shipped_variant("c", "bptt") == "c_given"
    assert study.shipped_variant("c", "dm") == "c"
    assert study.shipped_variant("c", "dsa") == "c"


def _choosing_rows(study, gains: dict[str, dict[tuple, list[float]]]) -> list[dict]:
    rows = []
    for cell in study.CHOOSING_CELLS:
        rows += [_row(cell, "base", s, 70.0) for s in range(3)]
    for variant, per_cell in gains.items():
        for cell, diffs in per_cell.items():
            rows += [_row(cell, variant, s, 70.0 + d) for s, d in enumerate(diffs)]
    return rows


def test_the_shipped_setting_is_the_best_finalist_that_hurts_no_choosing_cell(study,
                                                                              monkeypatch):
    monkeypatch.setattr(study, "CANDIDATES", {"big": {}, "steady": {}, "weak": {}})
    screen = study.SCREEN_CELL
    others = [c for c in study.CHOOSING_CELLS if c != screen]
    gains = {
        # the largest mean gain, but a clear loss on one choosing cell: out
        "big": {screen: [3.0, 3.1, 2.9], **{c: [2.0, 2.1, 1.9] for c in others[1:]},
                others[0]: [-1.0, -1.1, -0.9]},
        "steady": {screen: [1.0, 1.1, 0.9], **{c: [0.5, 0.6, 0.4] for c in others}},
        # fails the screening cell (mean gain under half a point), whatever else it does
        "weak": {screen: [0.2, 0.3, 0.1], **{c: [5.0, 5.1, 4.9] for c in others}},
    }
    out = study.choose_setting(_choosing_rows(study, gains))
    assert out["screening"]["finalists"] == ["big", "steady"]
    assert out["hurts"]["big"] == [f"{others[0][0]} ipc{others[0][1]} {others[0][2]}"]
    assert out["hurts"]["steady"] == []
    assert out["chosen"] == "steady"
    assert out["score"]["steady"] == pytest.approx((1.0 + 0.5 * len(others)) / 5)


def test_no_choice_while_a_finalist_has_not_run_on_every_choosing_cell(study, monkeypatch):
    monkeypatch.setattr(study, "CANDIDATES", {"steady": {}})
    screen = study.SCREEN_CELL
    gains = {"steady": {screen: [1.0, 1.1, 0.9]}}
    assert study.choose_setting(_choosing_rows(study, gains)) is None
