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
"""

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
from .features import for_regularizer
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

__all__ = [
    "TAPS", "Augmentation", "AugmentationRef", "Backbone", "BackboneRef", "BuildError",
    "ComponentRef", "CriticRef", "DDLoss", "DataError", "DataInfo", "DatasetRef",
    "EvalRequest", "EvalResult", "Evaluator", "EvaluatorRef", "ExpertBuffers", "LoggerRef",
    "LossOutput",
    "LossRef", "MdkError", "NoGradPasses", "NumbersModel", "Params", "PluginError",
    "RealData", "RecipeError", "Regularizer", "RegularizerRef", "RunContext", "RunError",
    "Shard", "SyntheticState", "Tap", "check_tap", "class_table", "conform",
    "epochs_done", "for_regularizer", "gather_indexed", "isolated_rng", "local_indices",
    "tapped_features", "trait",
]
