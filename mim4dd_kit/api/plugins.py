"""Base classes of the plugin kinds, with a default for every attribute the engine reads.

A plugin subclasses the base of its kind and overrides what it needs; the engine then
reads every attribute directly. A plugin written against the older duck-typed contract
(``mim4dd_kit.contracts``) still works: the registry fills in the defaults of what it
lacks (:func:`conform`) when it builds it, and :func:`trait` reads a class attribute with
the kind's default. See docs/plugins.md.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from .context import Shard

if TYPE_CHECKING:
    from .context import RunContext, SyntheticState
    from .params import Params
    from .results import EvalRequest, EvalResult, ExpertBuffers, LossOutput


@runtime_checkable
class Augmentation(Protocol):
    """A differentiable augmentation.

    ``siamese(real, real_groups, syn, syn_groups)`` applies the *same* sampled
    transformation to every real and synthetic sample that share a group id (DM and DC
    use the class as the group). ``__call__(x)`` augments each sample independently
    (evaluation training).
    """

    def siamese(
        self, real: Tensor, real_groups: Tensor, syn: Tensor, syn_groups: Tensor
    ) -> tuple[Tensor, Tensor]: ...

    def __call__(self, x: Tensor) -> Tensor: ...


class DDLoss:
    """A dataset-distillation loss (``mdk.dd_losses``), built as ``cls(params, *, ctx)``.

    ``compute`` returns L_DD for one outer iteration; with ``want_features`` it also
    returns the per-block features of both sides for a regularizer. It may keep state
    (a network trained between outer steps, expert buffers) in ``state_dict`` /
    ``load_state_dict`` so runs resume exactly. ``syn`` given to ``compute`` is the set
    decoded by ``ctx.formation``; the hooks get the stored set.
    """

    #: the engine creates a learnable lr (``syn.lr``) for this loss
    learns_lr: ClassVar[bool] = False
    #: where a learned lr starts unless the recipe sets ``synthetic.lr_init``
    initial_lr: float = 0.01
    #: the loss honours ``ctx.shard``: it keeps only its rank's real rows and returns a
    #: partial loss whose sum over ranks is the full loss (docs/distributed.md);
    #: multi-process runs refuse losses without it
    shardable: ClassVar[bool] = False
    #: image-optimiser steps per iteration, each a ``compute`` -> backward -> step
    image_steps: int = 1
    #: the loss matches expert trajectories trained on the real data before the run;
    #: ``mdk buffer`` builds them ahead through :meth:`build_expert_buffers`, and refuses
    #: losses without this flag
    needs_expert_buffers: ClassVar[bool] = False

    def __init__(self, params: Params, *, ctx: RunContext):
        self.params = params
        self.ctx = ctx

    def compute(self, syn: SyntheticState, iteration: int, want_features: bool) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement compute")

    @classmethod
    def build_expert_buffers(cls, params: Params, *, ctx: RunContext,
                             progress: bool = False) -> ExpertBuffers:
        """Train (or find) the expert trajectories ``params`` ask for, before any run.

        ``mdk buffer`` calls it for losses with :attr:`needs_expert_buffers`, with the
        validated parameters and the context a run of the same recipe gets (built without
        seeding or touching process-wide settings); ``progress`` asks for a progress bar.
        It trains the missing experts, keeps the present ones and says where they are. The
        loss's own constructor is expected to find the same folder.
        """
        raise NotImplementedError(
            f"{cls.__name__} sets needs_expert_buffers but does not implement "
            "build_expert_buffers"
        )

    def state_dict(self) -> dict[str, Any]:
        """What the loss needs to resume exactly (tensors, numbers, nested dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def init_images(self, syn: SyntheticState) -> None:
        """Called once under ``no_grad`` after the engine initialised the stored set."""
        return None

    def after_step(self, syn: SyntheticState) -> None:
        """Called under ``no_grad`` after every image step with the stored set (e.g. a
        projection)."""
        return None


class Regularizer(nn.Module):
    """An MI regularizer (``mdk.regularizers``), built as
    ``cls(params, *, num_classes, feature_dims, registry)`` (plus ``feature_shapes``, each
    block's ``(C, H, W)``, when ``takes_feature_shapes``).

    Called as ``reg(syn_feats, syn_labels, real_feats, real_labels)``, it returns the
    already weighted scalar added to L_DD. Its own parameters (critic heads) are trained
    jointly with the images by Adam at ``lr``.
    """

    #: accepts real features split over ranks: the engine then sets :attr:`shard` and
    #: expects a partial loss (and ``last_logs``) whose sums over ranks are the full values
    shardable: ClassVar[bool] = False
    #: the constructor takes ``feature_shapes``
    takes_feature_shapes: ClassVar[bool] = False
    #: Adam learning rate of the regularizer's own parameters
    lr: float = 1e-3
    #: this process's part of the real features (set by the engine in sharded runs)
    shard: Shard = Shard()
    #: the 0-based outer iteration, set by the engine before every call
    iteration: int = 0
    #: scalars logged after every call (the engine copies them into the loss log)
    last_logs: Any = types.MappingProxyType({})

    @classmethod
    def feature_tap(cls, params: Params) -> str:
        """Where in each block the DD loss takes this regularizer's features
        (``Backbone.features``'s ``tap``): the ``tap`` field of ``params`` where the
        parameters model declares one, else ``"output"``."""
        return _field(params, "tap", "output")

    @classmethod
    def network_gradient(cls, params: Params) -> bool:
        """Whether this regularizer's gradient reaches the synthetic images through the
        training of the network that gives the synthetic side its features, where a base
        method trains that network on the synthetic set (MTT's student, BPTT's unrolled
        model): the ``network_gradient`` field of ``params`` where the parameters model
        declares one, else True."""
        return bool(_field(params, "network_gradient", True))

    def real_view(self) -> Callable[[list[Tensor]], list[Tensor]] | None:
        """A row-wise reduction of the real side's block features (``"output"`` tap) that
        this regularizer reads exactly as it reads the features themselves (e.g.
        per-channel means for a critic on pooled input), or None. A DD loss may hand over
        the reduced features instead (``ctx.real_view``), taking the reduction chunk by
        chunk so the whole real batch's block features are never kept."""
        return None

    def diagnostics(self) -> dict[str, float]:
        """Extra scalars logged at diagnostic iterations."""
        return {}

    def diagnostics_every(self) -> int:
        """Iterations between diagnostic iterations (0: none): the parameters'
        ``diagnostics_every`` field where the model declares one."""
        return int(_declared(self, "diagnostics_every", 0) or 0)

    def critic_steps(self, iteration: int) -> int:
        """Critic-only steps the engine takes before iteration ``iteration``'s joint step
        (minimising :meth:`critic_loss`): the parameters' ``critic_steps``, plus
        ``critic_warmup`` at the first iteration, where the model declares them."""
        warmup = _declared(self, "critic_warmup", 0) if iteration == 0 else 0
        return int(_declared(self, "critic_steps", 0)) + int(warmup)

    def critic_loss(self, syn_feats: list[Tensor], syn_labels: Tensor,
                    real_feats: list[Tensor], real_labels: Tensor) -> Tensor:
        """What critic-only steps minimise (needed when :meth:`critic_steps` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} takes critic-only steps but "
                                  "does not implement critic_loss")

    def image_scale(self) -> float | None:
        """Not None: the engine rescales the regularizer's image gradient to this multiple
        of the DD loss's (docs/components/mim4dd.md)."""
        return None

    def reference_norm(self, dd_norm: Tensor) -> Tensor:
        """Under :meth:`image_scale`: the DD image-gradient norm the scale multiplies,
        given this iteration's (called once per iteration; default: that norm)."""
        return dd_norm


def _field(params: Params | None, name: str, default: Any) -> Any:
    """Field ``name`` of ``params`` where its model declares it, else ``default``."""
    if params is not None and name in type(params).model_fields:
        return getattr(params, name)
    return default


def _declared(plugin: Any, name: str, default: Any) -> Any:
    """Field ``name`` of ``plugin.params`` where its parameters model declares it."""
    return _field(vars(plugin).get("params"), name, default)


class Evaluator:
    """Scores a synthetic set (``mdk.evaluators``), built as ``cls(params)``."""

    def __init__(self, params: Params):
        self.params = params

    def evaluate(self, request: EvalRequest, registry: Any,
                 progress: Callable[..., None] | None = None) -> EvalResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate")

    def planned_epochs(self, request: EvalRequest) -> int | None:
        """Network-epochs this process will train (a progress bar's total); None: unknown."""
        return None


#: the base class of each plugin kind that has engine-read attributes
BASES: dict[str, type] = {"dd_losses": DDLoss, "regularizers": Regularizer,
                          "evaluators": Evaluator}
#: what :func:`conform` fills in on an object that does not subclass its kind's base
_FILLED: dict[str, tuple[str, ...]] = {
    "dd_losses": ("learns_lr", "initial_lr", "shardable", "image_steps", "init_images",
                  "after_step"),
    "regularizers": ("shardable", "takes_feature_shapes", "shard", "iteration", "last_logs",
                     "diagnostics", "diagnostics_every", "critic_steps", "image_scale"),
    "evaluators": ("planned_epochs",),
}


def conform(obj: Any, kind: str) -> Any:
    """Give ``obj`` (a built plugin of ``kind``) the base class's default of every
    attribute it lacks, so the engine can read them directly; returns ``obj``."""
    base = BASES.get(kind)
    if base is None or isinstance(obj, base):
        return obj
    for name in _FILLED[kind]:
        if hasattr(obj, name):
            continue
        default = getattr(base, name)
        if callable(default) and not isinstance(default, type):
            default = types.MethodType(default, obj)
        object.__setattr__(obj, name, default)
    return obj


def trait(cls: type, kind: str, name: str) -> Any:
    """Class attribute ``name`` of plugin class ``cls``, else the kind's default."""
    base = BASES[kind]
    return getattr(cls, name) if hasattr(cls, name) else getattr(base, name)
