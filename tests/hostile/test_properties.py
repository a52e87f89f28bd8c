"""Property-based: random recipe documents and random safetensors files never produce
anything but a valid result or the toolkit's own clear error."""

import json
import math
import struct

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mim4dd_kit.config.recipe import Recipe, parse_yaml, validate_recipe
from mim4dd_kit.core.errors import CheckpointError, RecipeError, SyntheticSetError
from mim4dd_kit.io.synthetic import SyntheticSet, load_synthetic
from mim4dd_kit.run.statefile import load_state

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ["name", "seed", "device", "dataset", "synthetic", "ipc", "lr", "iterations", "init",
        "backbone", "width", "depth", "norm", "dd_loss", "regularizer", "lambda", "beta",
        "critic", "out_dim", "augmentation", "evaluators", "output", "file", "dir",
        "checkpoint_every", "performance", "schedule", "milestones", "gamma", "momentum",
        "batch_real", "learn_lr", "root", "zca", "<<", "digits", "convnet", "dm", "mim4dd"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(KEYS),
    st.text(max_size=20),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
), max_leaves=30)
RECIPES = st.fixed_dictionaries(
    {"name": st.one_of(st.just("t"), SCALARS), "dataset": st.one_of(
        st.just({"name": "digits"}), VALUES)},
    optional={k: VALUES for k in ["seed", "synthetic", "backbone", "dd_loss", "regularizer",
                                   "augmentation", "evaluators", "output", "performance"]},
)


def _load(text: str) -> Recipe | None:
    try:
        data = parse_yaml(text, "fuzz.yaml")
        return validate_recipe(data, source="fuzz.yaml", text=text)
    except RecipeError as exc:
        assert len(str(exc)) < 20_000  # bounded: values are shown short
        return None


@SETTINGS
@given(RECIPES)
def test_random_recipe_mappings_validate_or_fail_clearly(doc):
    got = _load(yaml.safe_dump(doc, allow_unicode=True))
    assert got is None or isinstance(got, Recipe)


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#,?\n\t 0123456789.e")),
               max_size=200))
def test_random_yaml_text_parses_or_fails_clearly(text):
    got = _load(text)
    assert got is None or isinstance(got, Recipe)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12), st.lists(st.integers(0, 11), max_size=40))
def test_random_alias_graphs_are_bounded(n, width, picks):
    # anchors that refer to earlier anchors, `width` times each: up to width^n values
    lines = ["a0: &a0 [x]"]
    it = iter(picks)
    for i in range(1, n):
        refs = [f"*a{min(next(it, i - 1), i - 1)}" for _ in range(width)]
        lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
    lines.append(f"name: t\ndataset: {{name: digits}}\nsynthetic: {{lr: *a{n - 1}}}")
    assert _load("\n".join(lines) + "\n") is None  # a0..: unknown keys at least


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3",
          "X", ""]
TENSOR = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES),
    "shape": st.lists(st.one_of(st.integers(0, 6), st.integers(-3, 2**40)), max_size=5),
    "data_offsets": st.lists(st.integers(-1, 5000), min_size=0, max_size=3),
})
META_VALUES = st.one_of(
    st.builds(json.dumps, VALUES.filter(lambda v: not _has_nonfinite(v))),
    st.text(max_size=30))


def _has_nonfinite(v):
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, list):
        return any(_has_nonfinite(x) for x in v)
    if isinstance(v, dict):
        return any(_has_nonfinite(x) for x in v.values())
    return False


HEADERS = st.dictionaries(
    st.sampled_from(["images", "labels", "lr", "0", "1", "other"]), TENSOR, max_size=4,
).flatmap(lambda tensors: st.fixed_dictionaries({
    "tensors": st.just(tensors),
    "meta": st.dictionaries(
        st.sampled_from(["mdk.recipe", "mdk.evaluations", "mdk.dataset", "mdk.components",
                         "mdk.tensors_sha256", "mdk.format", "format", "state", "fingerprint",
                         "mdk.final_losses", "mdk.iterations", "x"]),
        META_VALUES, max_size=5),
    "with_meta": st.booleans(),
    "body": st.binary(max_size=2048),
    "length_delta": st.sampled_from([0, 0, 0, 1, -1, 2**40]),
}))


def _write(tmp_path_factory, spec) -> str:
    header = dict(spec["tensors"])
    if spec["with_meta"]:
        header["__metadata__"] = spec["meta"]
    raw = json.dumps(header).encode()
    length = max(0, len(raw) + spec["length_delta"])
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(struct.pack("<Q", min(length, 2**64 - 1)) + raw + spec["body"])
    return str(path)


@SETTINGS
@given(HEADERS)
def test_random_safetensors_files_load_or_fail_clearly(tmp_path_factory, spec):
    path = _write(tmp_path_factory, spec)
    try:
        s = load_synthetic(path)
    except SyntheticSetError as exc:
        assert len(str(exc)) < 5000
    else:
        assert isinstance(s, SyntheticSet) and s.images.ndim == 4 and len(s.labels)


@SETTINGS
@given(HEADERS)
def test_random_checkpoint_files_load_or_fail_clearly(tmp_path_factory, spec):
    spec = {**spec, "meta": {**spec["meta"], "format": "mim4dd_kit.checkpoint/1"}}
    path = _write(tmp_path_factory, spec)
    try:
        state = load_state(path)
    except CheckpointError as exc:
        assert len(str(exc)) < 5000
    else:
        assert isinstance(state, dict)
