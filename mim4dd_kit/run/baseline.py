"""Coreset baselines as synthetic-set files: features, selection, provenance.

:func:`make_baseline` loads a data set, computes the feature space a method selects in,
runs the method (a ``mdk.coresets`` plugin) and writes the chosen *real* training images
with :func:`~mim4dd_kit.io.synthetic.save_synthetic`, so ``mdk evaluate``, ``mdk compare``,
``mdk export`` and ``mdk report`` treat a baseline like any distilled set.

Feature space (:class:`FeatureSpace`): as we read the DC paper (Zhao et al., ICLR 2021,
section 4.1), its herding and k-center baselines work on features of a network trained on
the whole training set; it does not give that network's schedule. The default is a
CPU-sized ConvNet of width 32 (the embedding before the classifier, ``Backbone.embed``)
trained on the real training set for 2 epochs with the evaluation protocol's optimiser
(SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr x0.1 at half the epochs),
without augmentation.
``space: pixels`` selects on the normalised pixels instead, at no training cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, ValidationError

from ..api import BackboneRef, ComponentRef, DatasetRef, Params, RealData
from ..config.registry import ParamsError, Registry, _pretty, default_registry
from ..core import progress as meter
from ..core import provenance
from ..core.errors import DataError, PluginError, RecipeError, RunError
from ..core.runtime import isolated_rng, resolve_device
from ..io.synthetic import save_synthetic
from ..training.loop import accuracy, train_network
from .context import load_data


class CoresetRef(ComponentRef):
    """A reference to a coreset method (``mdk.coresets``), e.g. ``{name: herding}``."""

    kind: ClassVar[str] = "coresets"


class FeatureSpace(Params):
    """Where herding and k-center measure distances."""

    space: str = Field(
        "convnet", min_length=1,
        description="'pixels', or a backbone plugin trained on the real training set "
        "whose embedding (the flattened last block) is the feature",
    )
    width: int | None = Field(
        32, gt=0, description="backbone width, for a backbone that has a width parameter "
        "(default 32: CPU-sized; null: the backbone's own default)")
    depth: int | None = Field(None, gt=0, description="backbone depth (default: its own)")
    epochs: int = Field(2, ge=0, description="training epochs; 0 keeps the random init")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)


def _validated(model: type[Params], value: Any, what: str) -> Any:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{what}.{'.'.join(map(str, e['loc']))}: {_pretty(e)}" for e in exc.errors()
        )
        raise RecipeError(problems) from None


def _check_backbone(name: str, registry: Registry) -> None:
    try:
        registry.resolve("backbones", name)
    except PluginError as exc:
        raise PluginError(
            f"features.space must be 'pixels' or a backbone plugin name: {exc}"
        ) from None


@torch.no_grad()
def _embed(net: torch.nn.Module, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    net.eval()
    embed = getattr(net, "embed", None) or (lambda x: net.features(x)[-1].flatten(1))
    return torch.cat([embed(images[i:i + batch]) for i in range(0, len(images), batch)])


def compute_features(
    data: RealData,
    space: FeatureSpace | dict[str, Any] | None = None,
    *,
    seed: int = 0,
    registry: Registry | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Features (N, D) of ``data``'s training images and a description of the space.

    ``pixels``: the flattened normalised images. Otherwise a network of the named backbone
    plugin is trained on the training set (seeded with ``seed``, on the data's device) and
    its embedding is returned; the description records its settings and test accuracy.
    """
    registry = registry or default_registry()
    spec = _validated(FeatureSpace, space, "features")
    if spec.space == "pixels":
        return data.train_images.flatten(1), {"space": "pixels"}
    _check_backbone(spec.space, registry)
    params = {k: v for k, v in (("width", spec.width), ("depth", spec.depth)) if v is not None}
    if "width" not in spec.model_fields_set and "width" not in registry.load(
            "backbones", spec.space).Params.model_fields:
        params.pop("width", None)  # the CPU-sized default applies where there is a width
    ref = BackboneRef.model_validate({"name": spec.space, **params})
    try:
        registry.validate("backbones", ref)
    except ParamsError as exc:
        raise RecipeError("; ".join(f"features.{'.'.join(map(str, p.path))}: {p.message}"
                                    for p in exc.problems)) from None
    info = data.info
    device = data.train_images.device
    start = time.perf_counter()
    with isolated_rng(seed, device):
        net = registry.build("backbones", ref, channels=info.channels,
                             num_classes=info.num_classes,
                             image_size=info.image_size).to(device)
        if spec.epochs:
            if progress is not None:
                progress(f"training the {spec.space} feature network on the real training "
                         f"set ({spec.epochs} epochs)")
            steps = spec.epochs * meter.batches(len(data.train_labels), spec.batch_size)
            with meter.planned(steps, "feature network"):
                train_network(net, data.train_images, data.train_labels, epochs=spec.epochs,
                              lr=spec.lr, momentum=spec.momentum,
                              weight_decay=spec.weight_decay, batch_size=spec.batch_size)
    acc = accuracy(net, data.test_images, data.test_labels)
    feats = _embed(net, data.train_images)
    described = {"space": spec.space, "backbone": {"name": ref.name, **ref.params},
                 **spec.model_dump(exclude={"space", "width", "depth"}),
                 "test_accuracy": acc, "dim": int(feats.shape[1]),
                 "seconds": time.perf_counter() - start}
    return feats, described


def make_baseline(
    dataset: DatasetRef | dict[str, Any] | str,
    method: CoresetRef | dict[str, Any] | str,
    ipc: int,
    seed: int,
    out: str | Path,
    *,
    features: FeatureSpace | dict[str, Any] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    registry: Registry | None = None,
    data: RealData | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Select a coreset of ``ipc`` real images per class and write it as a synthetic set.

    ``dataset`` and ``method`` are component references (``"digits"``,
    ``{"name": "k_center", "first": "random"}``); ``features`` configures the feature
    space (:class:`FeatureSpace`; unused by ``random``). ``data`` may pass the already
    loaded data set (it must be the one ``dataset`` names). The file's metadata records
    the method, its parameters, the feature space, the chosen training-set indices, the
    data set identity, the seed and the device; its ``recipe`` entry holds the parts of a
    recipe a baseline has (name, seed, dataset), so ``mdk evaluate`` finds the data set.
    Returns the path written.
    """
    registry = registry or default_registry()
    out = Path(out)
    ds_ref = DatasetRef.model_validate(dataset)
    co_ref = CoresetRef.model_validate(method)
    for what, kind, ref in (("dataset", "datasets", ds_ref), ("method", "coresets", co_ref)):
        try:
            registry.validate(kind, ref)
        except ParamsError as exc:
            raise RecipeError("; ".join(f"{what}.{'.'.join(map(str, p.path))}: {p.message}"
                                        for p in exc.problems)) from None
    selector = registry.build("coresets", co_ref)
    method_params = registry.validate("coresets", co_ref).model_dump(mode="json")
    space = _validated(FeatureSpace, features, "features")
    if space.space != "pixels" and getattr(selector, "needs_features", True):
        _check_backbone(space.space, registry)
    if ipc < 1:
        raise RecipeError(f"ipc must be at least 1, got {ipc}")
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; choose another output or pass --overwrite")
    started = provenance.now()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    data = load_data(registry, ds_ref, dev) if data is None else data.to(dev)
    counts = data.class_counts()
    if int(counts.min()) < ipc:
        raise DataError(
            f"ipc is {ipc} but class {int(counts.argmin())} of {data.info.name!r} has only "
            f"{int(counts.min())} training images"
        )
    if getattr(selector, "needs_features", True):
        feats, feature_info = compute_features(data, space, seed=seed, registry=registry,
                                               progress=progress)
    else:
        feats = torch.empty(len(data.train_labels), 0, device=dev)
        feature_info = {"space": None}
    generator = torch.Generator().manual_seed(seed)
    indices = selector.select(feats, data.train_labels, ipc, generator)
    images = data.train_images[indices]
    labels = data.train_labels[indices]
    components = provenance.components(registry, [("dataset", ds_ref), ("coreset", co_ref)])
    if feature_info.get("backbone"):
        components.append({"key": "features.backbones",
                           **registry.provenance("backbones", feature_info["space"])})
    dataset_spec = {"name": ds_ref.name, **ds_ref.params}
    meta = {
        **provenance.environment(),
        "components": components,
        "recipe": {"name": f"{data.info.name}_ipc{ipc}_{co_ref.name}", "seed": seed,
                   "dataset": dataset_spec},
        "coreset": {"method": co_ref.name, "params": method_params,
                    "features": feature_info, "ipc": ipc,
                    "indices": indices.cpu().tolist(), "index_split": "train"},
        "seed": seed,
        "device": str(dev),
        "dataset": provenance.dataset_entry(data),
        "started": started,
        "finished": provenance.now(),
        "run_seconds": time.perf_counter() - t0,
    }
    return save_synthetic(out, images, labels, None, meta)
