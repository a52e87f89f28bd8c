"""The synthetic-set file format: safetensors tensors plus JSON provenance.

Tensors: ``images`` (float32, (N, C, H, W), in the data set's normalised space),
``labels`` (int64, (N,)) and, when a method learned one, ``lr`` (float32 scalar).
``__metadata__`` is str -> str only, so each provenance entry is a JSON string under a
``mdk.`` key. The header's key order is not stable, so integrity is a sha256 of the
tensor bytes, never of the file. Metadata is untrusted text: it is parsed as JSON and
nothing in it is ever imported or evaluated.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import SyntheticSetError
from ..core.files import atomic_write
from . import formation

FORMAT = "mim4dd_kit.synthetic/1"
PREFIX = "mdk."


def tensors_sha256(images: torch.Tensor, labels: torch.Tensor, lr: float | None = None) -> str:
    """sha256 over the canonical bytes of the set's tensors (float32 / int64, C order)."""
    h = hashlib.sha256()
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    if lr is not None:
        h.update(torch.tensor(float(lr), dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()


@dataclass
class SyntheticSet:
    """A loaded synthetic set. ``metadata`` holds the decoded ``mdk.`` entries."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def made_by_mdk(self) -> bool:
        return self.metadata.get("format") == FORMAT

    @property
    def num_classes(self) -> int:
        ds = self.metadata.get("dataset")
        recorded = ds.get("num_classes") if isinstance(ds, dict) else None
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
            return recorded
        return int(self.labels.max()) + 1

    def ipc(self) -> int:
        # counts of the labels present: memory follows the set, not its largest label
        return int(torch.unique(self.labels, return_counts=True)[1].max())

    def check_finite(self, where: str) -> None:
        """Refuse a set that cannot be scored: NaN/Inf pixels, a non-finite or
        non-positive learned lr."""
        bad = int((~torch.isfinite(self.images)).sum())
        if bad:
            raise SyntheticSetError(
                f"{where}: 'images' holds {bad:,} NaN/Inf value(s); a set with non-finite "
                "pixels cannot be scored (the run that made it diverged)"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SyntheticSetError(
                f"{where}: the learned 'lr' is {self.lr}; it must be a finite number > 0"
            )

    @property
    def formation(self) -> int:
        """Multi-formation factor recorded in ``mdk.formation`` (1 when absent)."""
        try:
            return formation.factor_of(self.metadata)
        except ValueError as exc:
            raise SyntheticSetError(str(exc)) from None

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels networks train on: the stored set decoded by its formation
        factor (``mim4dd_kit/io/formation.py``); the stored tensors themselves at factor 1."""
        ds = self.metadata.get("dataset") or {}
        pad = (formation.pad_value(ds["mean"], ds["std"]) if ds.get("mean") and ds.get("std")
               else 0.0)
        return formation.decode(self.images, self.labels, self.formation, pad=pad)


def save_synthetic(
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a synthetic set atomically; ``metadata`` values are stored as JSON."""
    path = Path(path)
    images = images.detach().to("cpu", torch.float32).contiguous()
    labels = labels.detach().to("cpu", torch.int64).contiguous()
    _check_tensors(images, labels, str(path))
    tensors = {"images": images, "labels": labels}
    if lr is not None:
        tensors["lr"] = torch.tensor(float(lr), dtype=torch.float32)
    meta = dict(metadata or {})
    meta["format"] = FORMAT
    meta["tensors_sha256"] = tensors_sha256(images, labels, lr)
    header = {PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def _check_tensors(images: torch.Tensor, labels: torch.Tensor, where: str) -> None:
    if images.ndim >= 1 and images.shape[0] == 0:
        raise SyntheticSetError(f"{where}: the set holds no images")
    if images.ndim != 4:
        raise SyntheticSetError(
            f"{where}: 'images' must have shape (N, C, H, W), got {tuple(images.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SyntheticSetError(
            f"{where}: 'labels' must have shape ({images.shape[0]},) to match 'images', "
            f"got {tuple(labels.shape)}"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise SyntheticSetError(f"{where}: 'labels' holds negative class ids")


def load_synthetic(path: str | Path, verify: bool = True) -> SyntheticSet:
    """Read and check a synthetic set (from mdk or any conforming producer)."""
    path = Path(path)
    if not path.is_file():
        raise SyntheticSetError(f"synthetic set {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = set(f.keys())
            missing = {"images", "labels"} - keys
            if missing:
                raise SyntheticSetError(
                    f"{path} is not a synthetic set: it lacks the tensor(s) "
                    f"{', '.join(sorted(missing))} (found: {', '.join(sorted(keys)) or 'none'})"
                )
            images = f.get_tensor("images")
            labels = f.get_tensor("labels")
            lr = float(f.get_tensor("lr")) if "lr" in keys else None
    except SyntheticSetError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise SyntheticSetError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from None
    if not images.is_floating_point():
        raise SyntheticSetError(f"{path}: 'images' must be floating point, got {images.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise SyntheticSetError(f"{path}: 'labels' must be integers, got {labels.dtype}")
    images, labels = images.float(), labels.long()
    _check_tensors(images, labels, str(path))
    metadata: dict[str, Any] = {}
    for key, value in header.items():
        if not key.startswith(PREFIX):
            continue
        try:
            metadata[key[len(PREFIX):]] = json.loads(value)
        except json.JSONDecodeError:
            raise SyntheticSetError(
                f"{path}: metadata entry {key!r} is not valid JSON; the file is damaged"
            ) from None
    _check_metadata(metadata, path)
    try:
        formation.factor_of(metadata)
    except ValueError as exc:
        raise SyntheticSetError(f"{path}: {exc}") from None
    expected = metadata.get("tensors_sha256")
    if verify and expected is not None and expected != tensors_sha256(images, labels, lr):
        raise SyntheticSetError(
            f"{path}: the tensors do not match the sha256 recorded in the metadata; "
            "the file was modified or is corrupt"
        )
    return SyntheticSet(images, labels, lr, metadata)


_Number = (int, float)
#: the JSON type of each metadata entry the toolkit reads (anything else is kept as is)
_META_TYPES: dict[str, tuple[type, ...]] = {
    "recipe": (dict,), "dataset": (dict,), "evaluations": (dict,), "components": (list,),
    "final_losses": (dict,), "coreset": (dict,), "distributed": (dict,), "iterations": (int,),
    "seed": (int,), "run_seconds": _Number, "tensors_sha256": (str,), "format": (str,),
    "recipe_fingerprint": (str,), "toolkit_version": (str,), "started": (str,),
    "finished": (str,),
}
_RECIPE_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (dict,), "backbone": (dict,), "dd_loss": (dict,), "synthetic": (dict,),
    "regularizer": (dict, type(None)), "augmentation": (dict, type(None)),
    "evaluators": (list,), "seed": (int,), "name": (str,),
}
_EVAL_TYPES: dict[str, tuple[type, ...]] = {
    "accuracy_mean": _Number, "accuracy_std": _Number, "accuracies": (list,),
    "params": (dict,),
}


def _check_metadata(meta: dict[str, Any], path: Path) -> None:
    """Metadata is untrusted JSON: an entry the toolkit reads must have its JSON type,
    else a clear error naming the entry (never a crash in evaluate, compare or report)."""

    def check(value: Any, types: tuple[type, ...], key: str) -> None:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else
                                {dict: "an object", list: "a list", int: "an integer",
                                 float: "a number", str: "a string"}[t] for t in types)
            raise SyntheticSetError(f"{path}: metadata entry {key!r} must be {names}, got "
                                    f"{type(value).__name__}")

    for key, types in _META_TYPES.items():
        if key in meta:
            check(meta[key], types, key)
    for key, types in _RECIPE_TYPES.items():
        if key in meta.get("recipe", {}):
            check(meta["recipe"][key], types, f"recipe.{key}")
    for name, result in meta.get("evaluations", {}).items():
        check(result, (dict,), f"evaluations.{name}")
        for key, types in _EVAL_TYPES.items():
            if key in result:
                check(result[key], types, f"evaluations.{name}.{key}")
        for i, acc in enumerate(result.get("accuracies", [])):
            check(acc, _Number, f"evaluations.{name}.accuracies.{i}")
    for i, comp in enumerate(meta.get("components", [])):
        check(comp, (dict,), f"components.{i}")
    for key, value in meta.get("final_losses", {}).items():
        check(value, _Number, f"final_losses.{key}")


def update_metadata(path: str | Path, **entries: Any) -> SyntheticSet:
    """Merge ``entries`` into a set's metadata and rewrite the file atomically."""
    s = load_synthetic(path)
    meta = {**s.metadata, **entries}
    meta.pop("format", None)
    meta.pop("tensors_sha256", None)
    save_synthetic(path, s.images, s.labels, s.lr, meta)
    return load_synthetic(path)
