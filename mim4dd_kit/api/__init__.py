"""The public plugin API: everything a plugin author imports comes from here.

Each plugin kind is a class with a nested Pydantic ``Params`` model (a :class:`Params`
subclass). The registry validates a recipe's parameters against ``Params`` before anything
is built; the engine then constructs the component with the validated parameters plus
keyword-only context that depends on its kind:

- datasets: ``cls(params)``; ``.load() -> RealData``
- backbones: ``cls(params, *, channels, num_classes, image_size)``; a :class:`Backbone`
- critics: ``cls(params, *, in_features)``; an ``nn.Module`` mapping (B, D) -> (B, E)
- augmentations: ``cls(params, *, data_info)``; an :class:`Augmentation`
- dd_losses: ``cls(params, *, ctx)``; a :class:`DDLoss` receiving a :class:`RunContext`
- regularizers: ``cls(params, *, num_classes, feature_dims, registry)``; a
  :class:`Regularizer`
- evaluators: ``cls(params)``; an :class:`Evaluator` returning an :class:`EvalResult`
- loggers: ``cls(params)``; see :mod:`mim4dd_kit.api.loggers`

The toolkit's own layers are private: ``mim4dd_kit.training`` (shared training
machinery), the plugin packages, and the orchestration above them. See docs/plugins.md
and docs/architecture.md.

Names resolve lazily (PEP 562): ``from mim4dd_kit.api import Params`` imports only the
module that defines ``Params``, so the recipe models (:mod:`.params`) load without torch
(``mdk validate``, ``mdk list-plugins``); ``Backbone``, ``RunContext`` and the other
torch-based names import torch when first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.distributed import gather_indexed, local_indices
    from ..core.errors import (
        BuildError,
        DataError,
        MdkError,
        PluginError,
        RecipeError,
        RunError,
    )
    from ..core.progress import epochs_done
    from ..core.runtime import isolated_rng
    from .backbone import TAPS, Backbone, Tap, check_tap, tapped_features
    from .context import NoGradPasses, RunContext, Shard, SyntheticState
    from .data import DataInfo, RealData, class_table
    from .features import for_regularizer, trained_weights
    from .params import (
        AugmentationRef,
        BackboneRef,
        ComponentRef,
        CriticRef,
        DatasetRef,
        EvaluatorRef,
        LoggerRef,
        LossRef,
        NumbersModel,
        Params,
        RegularizerRef,
    )
    from .plugins import Augmentation, DDLoss, Evaluator, Regularizer, conform, trait
    from .results import EvalRequest, EvalResult, ExpertBuffers, LossOutput

#: the module (relative to this package) that defines each public name
_WHERE: dict[str, str] = {
    **dict.fromkeys(("gather_indexed", "local_indices"), "..core.distributed"),
    **dict.fromkeys(("BuildError", "DataError", "MdkError", "PluginError", "RecipeError",
                     "RunError"), "..core.errors"),
    "epochs_done": "..core.progress",
    "isolated_rng": "..core.runtime",
    **dict.fromkeys(("TAPS", "Tap"), ".params"),
    **dict.fromkeys(("Backbone", "check_tap", "tapped_features"), ".backbone"),
    **dict.fromkeys(("NoGradPasses", "RunContext", "Shard", "SyntheticState"), ".context"),
    **dict.fromkeys(("DataInfo", "RealData", "class_table"), ".data"),
    **dict.fromkeys(("for_regularizer", "trained_weights"), ".features"),
    **dict.fromkeys(("AugmentationRef", "BackboneRef", "ComponentRef", "CriticRef",
                     "DatasetRef", "EvaluatorRef", "LoggerRef", "LossRef", "NumbersModel",
                     "Params", "RegularizerRef"), ".params"),
    **dict.fromkeys(("Augmentation", "DDLoss", "Evaluator", "Regularizer", "conform",
                     "trait"), ".plugins"),
    **dict.fromkeys(("EvalRequest", "EvalResult", "ExpertBuffers", "LossOutput"),
                    ".results"),
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "TAPS", "Augmentation", "AugmentationRef", "Backbone", "BackboneRef", "BuildError",
    "ComponentRef", "CriticRef", "DDLoss", "DataError", "DataInfo", "DatasetRef",
    "EvalRequest", "EvalResult", "Evaluator", "EvaluatorRef", "ExpertBuffers", "LoggerRef",
    "LossOutput",
    "LossRef", "MdkError", "NoGradPasses", "NumbersModel", "Params", "PluginError",
    "RealData", "RecipeError", "Regularizer", "RegularizerRef", "RunContext", "RunError",
    "Shard", "SyntheticState", "Tap", "check_tap", "class_table", "conform",
    "epochs_done", "for_regularizer", "gather_indexed", "isolated_rng", "local_indices",
    "tapped_features", "trained_weights", "trait",
]
