"""Scoring synthetic sets with evaluator plugins (``mdk evaluate`` and end of runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .contracts import (
    AugmentationRef,
    BackboneRef,
    DatasetRef,
    EvalRequest,
    EvaluatorRef,
    RealData,
)
from .errors import SyntheticSetError
from .registry import Registry, default_registry
from .runtime import resolve_device
from .synthetic import SyntheticSet, load_synthetic, update_metadata


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
) -> dict[str, Any]:
    """Run each evaluator on one set; results keyed by evaluator name (``name.2``...)."""
    registry = registry or default_registry()
    request = EvalRequest(images, labels, lr, data, device, seed, backbone, augmentation)
    results: dict[str, Any] = {}
    for ref in evaluators:
        key, n = ref.name, 2
        while key in results:
            key, n = f"{ref.name}.{n}", n + 1
        evaluator = registry.build("evaluators", ref)
        results[key] = {"params": ref.params, **evaluator.evaluate(request, registry, progress)}
    return results


def _dataset_for(s: SyntheticSet, dataset: DatasetRef | None, path: Path) -> DatasetRef:
    if dataset is not None:
        return dataset
    recorded = (s.metadata.get("recipe") or {}).get("dataset")
    if recorded is None:
        raise SyntheticSetError(
            f"{path} carries no mdk provenance, so its data set is unknown; name it "
            "(e.g. --dataset fashion_mnist)"
        )
    return DatasetRef.model_validate(recorded)


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
    recorded = (s.metadata.get("dataset") or {}).get("sha256")
    if recorded and recorded != data.identity.get("sha256"):
        warnings.append(
            f"the set was distilled from a different copy of {info.name!r} "
            f"(content hash {recorded[:12]} vs {str(data.identity.get('sha256'))[:12]})"
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
) -> dict[str, Any]:
    """Score the set at ``path``; with ``save`` the results go into its metadata.

    Evaluators default to those of the recipe that made the set, else
    ``train_from_scratch`` with its defaults.
    """
    registry = registry or default_registry()
    path = Path(path)
    s = load_synthetic(path)
    recipe = s.metadata.get("recipe") or {}
    ds_ref = _dataset_for(s, dataset, path)
    data = registry.build("datasets", ds_ref).load()
    held = recipe.get("validation")
    if held:  # the same held-out images as the run that made the set
        data = data.hold_out(int(held["per_class"]), int(held.get("seed", 0)))
    warnings = check_compatible(s, data, path)
    dev = resolve_device(device)
    if evaluators is None:
        evaluators = [EvaluatorRef.model_validate(e) for e in recipe.get("evaluators") or []]
        evaluators = evaluators or [EvaluatorRef(name="train_from_scratch")]
    backbone = BackboneRef.model_validate(recipe["backbone"]) if "backbone" in recipe else None
    aug = recipe.get("augmentation")
    results = run_evaluators(
        evaluators, s.images, s.labels, s.lr, data.to(dev), device=dev,
        seed=recipe.get("seed", 0) if seed is None else seed,
        backbone=backbone, augmentation=AugmentationRef.model_validate(aug) if aug else None,
        registry=registry, progress=progress,
    )
    if save:
        update_metadata(path, evaluations={**(s.metadata.get("evaluations") or {}), **results})
    return {"file": str(path), "dataset": ds_ref.name, "warnings": warnings,
            "evaluations": results}
