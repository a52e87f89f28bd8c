"""Conformance checks a plugin package can call in its own tests.

Each check runs the toolkit for real on a tiny recipe (scikit-learn's 8x8 digits, a small
ConvNet, a few iterations on the CPU) and raises ``AssertionError`` with a message naming
what does not hold. They need no test framework; with pytest, call them inside a test::

    from mim4dd_kit import testing

    def test_my_loss_resumes_exactly(tmp_path):
        testing.check_resume_is_exact(testing.tiny_recipe({"name": "my_loss"}), tmp_path)

The plugin must be installed (its entry points registered) for the recipe-based checks.
See docs/plugins.md, "A second example, step by step".
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from .api import DDLoss, EvalRequest, EvalResult, EvaluatorRef, conform, tapped_features, trait
from .config.recipe import Recipe, validate_recipe
from .config.registry import Registry, default_registry
from .core.errors import RunError
from .io.synthetic import SyntheticSet, load_synthetic
from .run.engine import Run, run

#: the tiny recipe the checks run: digits, ConvNet width 8 depth 2, 6 iterations
TINY: dict[str, Any] = {
    "name": "conformance",
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "digits"},
    "synthetic": {"ipc": 3, "iterations": 6, "lr": 1.0, "batch_real": 24},
    "backbone": {"name": "convnet", "width": 8, "depth": 2},
    "dd_loss": {"name": "dm"},
    "augmentation": {"name": "dsa"},
    "evaluators": [],
    "output": {"checkpoint_every": 2},
}
#: the regularizer the checks add: MIM4DD with a small critic
MIM: dict[str, Any] = {"name": "mim4dd", "lambda": 0.8,
                       "critic": {"name": "linear", "out_dim": 16}}


def tiny_recipe(dd_loss: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """:data:`TINY` with ``dd_loss`` (``{"name": ..., **params}``) and top-level
    ``changes`` (a mapping merges one level deep into the section it names)."""
    data = copy.deepcopy(TINY)
    if dd_loss is not None:
        data["dd_loss"] = dict(dd_loss)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def _recipe(recipe: dict[str, Any] | Recipe, registry: Registry | None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    return validate_recipe(copy.deepcopy(recipe), registry=registry or default_registry())


def distill(recipe: dict[str, Any] | Recipe, out: str | Path, *,
            registry: Registry | None = None, **kwargs: Any) -> SyntheticSet:
    """Run ``recipe`` quietly into the folder ``out`` and load the set it wrote
    (``kwargs`` go to :func:`mim4dd_kit.run.engine.run`, e.g. ``resume=True``)."""
    result = run(_recipe(recipe, registry), out=Path(out), progress=False, registry=registry,
                 **kwargs)
    return load_synthetic(result.synthetic_path)


def check_builds_from_params(cls: type, kind: str, params: Any = None,
                             **context: Any) -> Any:
    """``cls`` builds from its ``Params`` defaults (or ``params``) with the keyword context
    of ``kind``, and every attribute the engine reads has a value of the right type.
    Returns the built object."""
    model = getattr(cls, "Params", None)
    assert model is not None, f"{cls.__name__} has no nested Params model"
    if params is None:
        try:
            params = model()
        except Exception as exc:
            raise AssertionError(f"{cls.__name__}.Params() has a required field without "
                                 f"a default: {exc}") from None
    obj = conform(cls(params, **context), kind)
    if kind == "dd_losses":
        assert isinstance(obj.learns_lr, bool), "learns_lr must be a bool"
        assert isinstance(obj.shardable, bool), "shardable must be a bool"
        assert isinstance(obj.image_steps, int) and obj.image_steps >= 1, \
            "image_steps must be an int >= 1"
        assert isinstance(obj.initial_lr, float | int) and math.isfinite(obj.initial_lr), \
            "initial_lr must be a finite number"
        needs = trait(cls, "dd_losses", "needs_expert_buffers")
        assert isinstance(needs, bool), "needs_expert_buffers must be a bool"
        if needs:
            build = getattr(cls, "build_expert_buffers", None)
            base = DDLoss.build_expert_buffers.__func__
            assert build is not None and getattr(build, "__func__", build) is not base, \
                "needs_expert_buffers is set: implement build_expert_buffers (mdk buffer)"
        state = obj.state_dict()
        assert isinstance(state, dict), "state_dict() must return a dict"
        obj.load_state_dict(state)
    elif kind == "evaluators":
        assert callable(obj.evaluate), "an evaluator needs evaluate(request, registry)"
    return obj


def check_lambda_zero_is_exact(recipe: dict[str, Any] | Recipe, workdir: str | Path, *,
                               regularizer: dict[str, Any] | None = None,
                               registry: Registry | None = None) -> None:
    """The recipe's method with a regularizer at λ = 0 gives the method's own images (and
    learned lr) bit for bit, and at λ > 0 other images: adding the regularizer must not
    move the method's random stream."""
    workdir = Path(workdir)
    base = dict(_recipe(recipe, registry).to_dict())
    reg = dict(regularizer or MIM)
    with_reg = {**base, "regularizer": {**reg, "lambda": 0.0}}
    full_reg = {**base, "regularizer": reg}
    base["regularizer"] = None
    plain = distill(base, workdir / "base", registry=registry)
    zero = distill(with_reg, workdir / "zero", registry=registry)
    full = distill(full_reg, workdir / "full", registry=registry)
    assert torch.equal(plain.images, zero.images) and plain.lr == zero.lr, (
        "with the regularizer at lambda 0 the images differ from the method's own: the "
        "loss draws different random numbers when features are asked for")
    assert not torch.equal(plain.images, full.images), (
        "the regularizer at lambda > 0 changed nothing: the loss's synthetic features do "
        "not carry gradient to the images")


def check_resume_is_exact(recipe: dict[str, Any] | Recipe, workdir: str | Path, *,
                          stop_after: int = 3, registry: Registry | None = None) -> None:
    """A run interrupted after ``stop_after`` iterations and resumed from its checkpoint
    ends with the images (and learned lr) of an uninterrupted run: the loss's
    ``state_dict`` holds all its state."""
    workdir = Path(workdir)
    r = _recipe(recipe, registry)
    straight = distill(r, workdir / "straight", registry=registry)

    def interrupt(iteration: int, logs: dict[str, float]) -> None:
        if iteration == stop_after:
            raise KeyboardInterrupt

    try:
        run(r, out=workdir / "resumed", progress=False, registry=registry,
            callbacks=[interrupt])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"the run did not reach iteration {stop_after}")
    try:
        resumed = distill(r, workdir / "resumed", registry=registry, resume=True)
    except RunError as exc:
        raise AssertionError(f"the interrupted run could not resume: {exc}") from None
    assert torch.equal(resumed.images, straight.images), (
        "the resumed run's images differ from an uninterrupted run's: some state of the "
        "loss is missing from state_dict/load_state_dict")
    assert resumed.lr == straight.lr, "the resumed run's learned lr differs"


def check_feature_handoff(recipe: dict[str, Any] | Recipe, workdir: str | Path, *,
                          registry: Registry | None = None) -> None:
    """With a regularizer in the recipe, ``compute(..., want_features=True)`` returns one
    feature tensor per backbone block for each side, shaped like the backbone's blocks at
    the run's feature tap (``(M, ...)`` synthetic, ``(N, ...)`` real) with matching
    labels, the synthetic ones carrying gradient to the images."""
    registry = registry or default_registry()
    data = dict(_recipe(recipe, registry).to_dict())
    data["regularizer"] = data.get("regularizer") or MIM
    r = Run(_recipe(data, registry), Path(workdir), torch.device("cpu"), registry)
    r.setup()
    out = r.loss.compute(r.loss_view(), 0, True)
    name = r.recipe.dd_loss.name
    for what in ("syn_feats", "syn_labels", "real_feats", "real_labels"):
        assert getattr(out, what) is not None, f"dd loss {name!r} returned no {what}"
    probe = r.ctx.make_backbone().eval()
    x = torch.zeros(1, r.data.info.channels, *r.data.info.image_size)
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in tapped_features(probe, x, r.ctx.feature_tap)]
    for side, feats, labels in (("synthetic", out.syn_feats, out.syn_labels),
                                ("real", out.real_feats, out.real_labels)):
        assert len(feats) == len(shapes), (
            f"{side} side: {len(feats)} feature tensors for a {len(shapes)}-block backbone")
        for k, (f, shape) in enumerate(zip(feats, shapes, strict=True)):
            assert tuple(f.shape[1:]) == shape and len(f) == len(labels), (
                f"{side} block {k + 1}: features {tuple(f.shape)} for {len(labels)} labels, "
                f"expected (n, {', '.join(map(str, shape))})")
    assert out.syn_feats[-1].requires_grad, "synthetic features carry no gradient"
    grads = torch.autograd.grad(out.syn_feats[-1].sum(), r.syn.images, allow_unused=True)[0]
    assert grads is not None and bool(grads.abs().sum() > 0), (
        "synthetic features do not depend on the synthetic images")


def check_evaluator_result(name: str, params: dict[str, Any] | None = None, *,
                           registry: Registry | None = None, ipc: int = 2,
                           seed: int = 0) -> EvalResult:
    """Evaluator ``name`` scores a tiny set (``ipc`` real digits images per class) and
    returns a JSON-serialisable record whose declared headline numbers are numbers.
    Returns it as an :class:`~mim4dd_kit.api.EvalResult`."""
    registry = registry or default_registry()
    data = registry.build("datasets", {"name": "digits"}).load()
    gen = torch.Generator().manual_seed(seed)
    images, labels = data.sample_per_class(ipc, generator=gen)
    ref = EvaluatorRef.model_validate({"name": name, **(params or {})})
    evaluator = registry.build("evaluators", ref)
    request = EvalRequest(images, labels, None, data, torch.device("cpu"), seed, None, None)
    raw = evaluator.evaluate(request, registry, None)
    assert isinstance(raw, dict), f"evaluator {name!r} returned {type(raw).__name__}, not a dict"
    try:
        json.dumps(raw)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"evaluator {name!r}'s result is not JSON: {exc}") from None
    result = EvalResult.of(raw)
    declared = result.get("headline")
    if declared is not None:
        assert isinstance(declared, list) and all(isinstance(k, str) for k in declared), (
            "headline must be a list of the result's keys")
        for key in declared:
            value = result.get(key)
            assert isinstance(value, int | float) and not isinstance(value, bool), (
                f"headline key {key!r} is not a number in the result")
    return result
