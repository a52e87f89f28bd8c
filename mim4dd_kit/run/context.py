"""What a run hands its DD loss, built from a recipe with no global side effects.

:func:`build_context` loads the recipe's data set (holding out its validation split),
moves it to the device and prepares the backbone factory and the augmentation. It seeds
nothing and sets no process-wide switch: a run seeds the global RNG and configures the
backends itself (``mim4dd_kit/run/engine.py``), ``mdk buffer`` uses the context as it is,
and ``mdk baseline`` shares its data loading (:func:`load_data`).
"""

from __future__ import annotations

from ..api import DatasetRef, RealData, RunContext, Shard
from ..config.performance import backbone_factory, chunk_bytes, compile_passes
from ..config.recipe import Recipe
from ..config.registry import Registry
from ..core.runtime import cache_dir
from ..training.chunked import ChunkedPasses


def load_data(registry: Registry, dataset: DatasetRef, device, validation=None) -> RealData:
    """The data set ``dataset`` on ``device``, its validation split held out first when
    ``validation`` (the recipe's ``validation`` section) is given."""
    data: RealData = registry.build("datasets", dataset).load()
    if validation is not None:  # before anything (init, batches, experts) reads it
        data = data.hold_out(validation.per_class, validation.seed)
    return data.to(device)


def build_context(
    recipe: Recipe, device, registry: Registry, *, shard: Shard | None = None
) -> RunContext:
    """The :class:`~mim4dd_kit.api.RunContext` of ``recipe`` on ``device``.

    Data set, backbone and augmentation come from ``registry``; ``shard`` is this
    process's part of a multi-process run (default: the whole batch).
    """
    r = recipe
    data = load_data(registry, r.dataset, device, r.validation)
    info = data.info
    bb_cls = registry.load("backbones", r.backbone.name)
    bb_params = registry.validate("backbones", r.backbone)

    def build():
        return bb_cls(bb_params, channels=info.channels, num_classes=info.num_classes,
                      image_size=info.image_size)

    perf = r.performance
    augment = (registry.build("augmentations", r.augmentation, data_info=info)
               if r.augmentation is not None else None)
    s = r.synthetic
    return RunContext(
        data, s.ipc, s.batch_real, device, backbone_factory(build, perf, device), augment,
        r.seed, {"name": r.backbone.name, **r.backbone.params}, cache_dir(),
        {"name": r.dataset.name, **r.dataset.params}, shard or Shard(), chunk_bytes(perf),
        s.formation, passes=ChunkedPasses(compile_passes(perf, device, s.iterations)),
    )
