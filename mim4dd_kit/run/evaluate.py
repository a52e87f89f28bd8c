"""Scoring synthetic sets with evaluator plugins (``mdk evaluate`` and end of runs)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..api import (
    AugmentationRef,
    BackboneRef,
    DatasetRef,
    EvalRequest,
    EvalResult,
    EvaluatorRef,
    RealData,
)
from ..config.recipe import ValidationSettings
from ..config.registry import Registry, default_registry
from ..core import distributed as _ddp
from ..core.errors import RecipeError, SyntheticSetError
from ..core.heap import keep_freed_memory
from ..core.runtime import resolve_device
from ..io import formation as _formation
from ..io.synthetic import SyntheticSet, load_synthetic, update_metadata
from .progress import EvaluationProgress, planned_epochs


def run_evaluators(
    evaluators: list[EvaluatorRef],
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float | None,
    data: RealData,
    *,
    device: torch.device,
    seed: int,
    backbone: BackboneRef | None = None,
    augmentation: AugmentationRef | None = None,
    registry: Registry | None = None,
    progress=None,
    formation: int = 1,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Run each evaluator on one set; results keyed by evaluator name (``name.2``...).

    ``progress`` is called with (network, networks, accuracy) as networks finish. The
    network-epochs trained are shown per evaluation as a bar on stderr with
    ``progress_bar``, else logged as plain lines (mim4dd_kit/run/progress.py).

    ``images``/``labels`` are the stored set; with ``formation`` > 1 they are decoded
    (``mim4dd_kit/io/formation.py``) first, so every evaluator trains on the decoded images.
    """
    registry = registry or default_registry()
    if formation > 1:
        pad = _formation.pad_value(data.info.mean, data.info.std).to(images.device)
        images, labels = _formation.decode(images, labels, formation, pad=pad)
    request = EvalRequest(images, labels, lr, data, device, seed, backbone, augmentation)
    results: dict[str, Any] = {}
    main = _ddp.is_main()  # the other ranks of a distributed run show nothing
    with EvaluationProgress(progress_bar and main) as shown:
        for key, ref in zip(result_keys(evaluators), evaluators, strict=True):
            evaluator = registry.build("evaluators", ref)
            watch = (shown.evaluation(key, planned_epochs(evaluator, request)) if main
                     else contextlib.nullcontext())
            with watch:
                result = EvalResult.of(evaluator.evaluate(request, registry, progress))
            results[key] = EvalResult({"params": ref.params, **result}, tables=result.tables,
                                      figures=result.figures)
    return results


def result_keys(evaluators: list[EvaluatorRef]) -> list[str]:
    """The keys results are stored under: the evaluator's name, ``name.2``... on repeats."""
    keys: list[str] = []
    for ref in evaluators:
        key, n = ref.name, 2
        while key in keys:
            key, n = f"{ref.name}.{n}", n + 1
        keys.append(key)
    return keys


def _recorded(s: SyntheticSet, path: Path, key: str, model: type[Any] | None = None) -> Any:
    """``recipe.<key>`` of the set's metadata, checked: a file may hold any JSON."""
    recipe = s.metadata.get("recipe")
    value = recipe.get(key) if isinstance(recipe, dict) else None
    if value is None or model is None:
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise SyntheticSetError(
            f"{path}: metadata entry 'recipe.{key}' is not a valid {key} reference "
            f"({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']})"
        ) from None


def _dataset_for(s: SyntheticSet, dataset: DatasetRef | None, path: Path) -> DatasetRef:
    if dataset is not None:
        return dataset
    recorded = _recorded(s, path, "dataset", DatasetRef)
    if recorded is None:
        raise SyntheticSetError(
            f"{path} carries no mdk provenance, so its data set is unknown; name it "
            "(e.g. --dataset fashion_mnist)"
        )
    return recorded


def _checked(model: type[Any], value: Any, path: Path, key: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise SyntheticSetError(
            f"{path}: metadata entry 'recipe.{key}' is not valid "
            f"({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']})"
        ) from None


def check_compatible(s: SyntheticSet, data: RealData, path: Path) -> list[str]:
    """Errors for sets that cannot be scored on ``data``; warnings returned as text."""
    info = data.info
    c, h, w = s.images.shape[1:]
    if (c, (h, w)) != (info.channels, tuple(info.image_size)):
        raise SyntheticSetError(
            f"{path}: images are {c}x{h}x{w} but data set {info.name!r} has "
            f"{info.channels}x{info.image_size[0]}x{info.image_size[1]} images"
        )
    if int(s.labels.max()) >= info.num_classes:
        raise SyntheticSetError(
            f"{path}: labels go up to {int(s.labels.max())} but data set {info.name!r} has "
            f"{info.num_classes} classes"
        )
    warnings = []
    ds_meta = s.metadata.get("dataset")
    recorded = ds_meta.get("sha256") if isinstance(ds_meta, dict) else None
    if recorded and recorded != data.identity.get("sha256"):
        warnings.append(
            f"the set was distilled from a different copy of {info.name!r} "
            f"(content hash {str(recorded)[:12]} vs {str(data.identity.get('sha256'))[:12]})"
        )
    return warnings


def evaluate(
    path: str | Path,
    *,
    evaluators: list[EvaluatorRef] | None = None,
    dataset: DatasetRef | None = None,
    device: str = "auto",
    seed: int | None = None,
    save: bool = False,
    registry: Registry | None = None,
    progress=None,
    overwrite: bool = False,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Score the set at ``path``; with ``save`` the results go into its metadata.

    Evaluators default to those of the recipe that made the set, else
    ``train_from_scratch`` with its defaults. A stored evaluation of the same name is
    replaced only with ``overwrite`` (checked before anything runs).
    """
    registry = registry or default_registry()
    path = Path(path)
    s = load_synthetic(path)
    s.check_finite(str(path))
    if evaluators is None:
        recorded = _recorded(s, path, "evaluators")
        if recorded is not None and not isinstance(recorded, list):
            raise SyntheticSetError(f"{path}: metadata entry 'recipe.evaluators' must be a "
                                    f"list, got {type(recorded).__name__}")
        evaluators = [_checked(EvaluatorRef, e, path, "evaluators") for e in recorded or []]
        evaluators = evaluators or [EvaluatorRef(name="train_from_scratch")]
    stored = s.metadata.get("evaluations")
    stored = stored if isinstance(stored, dict) else {}
    if save and not overwrite:
        clash = [k for k in result_keys(evaluators) if k in stored]
        if clash:
            raise SyntheticSetError(
                f"{path} already holds evaluation(s) {', '.join(map(repr, clash))}; pass "
                "--overwrite to replace them, or evaluate without --save"
            )
    ds_ref = _dataset_for(s, dataset, path)
    data = registry.build("datasets", ds_ref).load()
    held = _recorded(s, path, "validation", ValidationSettings)
    if held is not None:  # the same held-out images as the run that made the set
        data = data.hold_out(held.per_class, held.seed)
    warnings = check_compatible(s, data, path)
    dev = resolve_device(device)
    keep_freed_memory(dev)
    backbone = _recorded(s, path, "backbone", BackboneRef)
    aug = _recorded(s, path, "augmentation", AugmentationRef)
    if seed is None:
        seed = _recorded(s, path, "seed")
        seed = 0 if seed is None else seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**62:
            raise SyntheticSetError(f"{path}: metadata entry 'recipe.seed' must be an integer "
                                    "in [0, 2^62); pass --seed")
    elif not 0 <= seed < 2**62:
        raise RecipeError(f"--seed {seed}: must be in [0, 2^62)")
    results = run_evaluators(
        evaluators, s.images, s.labels, s.lr, data.to(dev), device=dev, seed=seed,
        backbone=backbone, augmentation=aug, registry=registry, progress=progress,
        formation=s.formation, progress_bar=progress_bar,
    )
    if save:
        update_metadata(path, evaluations={**stored, **results})
    return {"file": str(path), "dataset": ds_ref.name, "warnings": warnings,
            "formation": s.formation,
            "evaluations": results}
