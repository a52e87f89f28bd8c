"""EvalResult: the typed evaluator output, and a third-party headline shown everywhere."""

import pytest

from mim4dd_kit.analysis.compare import headlines
from mim4dd_kit.analysis.report import _evaluation_blocks, _Pictures
from mim4dd_kit.analysis.sweep import Variant, _row, format_table
from mim4dd_kit.api import EvalResult

#: what a third-party evaluator might store: its own headline number, no accuracy
CUSTOM = {"headline": ["score"], "score": 0.125, "rounds": 3}


def test_headline_is_the_declared_key_else_the_accuracy():
    assert EvalResult(CUSTOM).headline == "score"
    assert EvalResult(CUSTOM).headline_value == 0.125
    assert EvalResult({"accuracy_mean": 81.5, "accuracy_std": 0.5}).headline_value == 81.5
    # a declared key that is not a number is skipped
    assert EvalResult({"headline": ["name"], "name": "x", "accuracy_mean": 3}).headline == (
        "accuracy_mean")
    assert EvalResult({"rounds": 3}).headline is None


def test_of_accepts_dicts_and_refuses_the_rest():
    plain = {"accuracy_mean": 50.0}
    result = EvalResult.of(plain)
    assert isinstance(result, EvalResult) and result == plain
    assert EvalResult.of(result) is result
    with pytest.raises(TypeError, match="must return a dict"):
        EvalResult.of([1, 2])


def test_tables_and_figures_travel_but_the_record_is_the_dict():
    r = EvalResult({"a": 1}, tables={"t": "| x |"}, figures={"f": "p.png"})
    assert dict(r) == {"a": 1} and r.tables == {"t": "| x |"} and r.figures == {"f": "p.png"}


def test_a_third_party_headline_reaches_compare_sweep_and_report(tmp_path):
    assert headlines("custom", CUSTOM) == {"custom score": {"value": 0.125}}
    row = _row(Variant("v1", {"lr": 1}, [], None), tmp_path / "s", "done", 5, {"loss": 1.0},
               {"custom": CUSTOM})
    assert row["headlines"] == {"custom score": 0.125}
    table = format_table([row])
    head, _, line = table.splitlines()
    assert head.split(" | ")[3] == "custom score" and line.split(" | ")[3] == "0.125"
    blocks = _evaluation_blocks("custom", CUSTOM, _Pictures(tmp_path, "x"))
    assert blocks[0].text == "Headline: score = 0.125."
