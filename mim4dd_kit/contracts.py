"""Typed contracts between the engine and the plugins (the public plugin API).

Every component is a class with a nested Pydantic ``Params`` model. The registry
validates a recipe's parameters against ``Params`` before anything is built; the engine
then constructs the component with the validated parameters plus keyword-only context
that depends on its kind:

- datasets: ``cls(params)``; ``.load() -> RealData``
- backbones: ``cls(params, *, channels, num_classes, image_size)``; a :class:`Backbone`
- critics: ``cls(params, *, in_features)``; an ``nn.Module`` mapping (B, D) -> (B, E)
- augmentations: ``cls(params, *, data_info)``; an :class:`Augmentation`
- dd_losses: ``cls(params, *, ctx)``; a :class:`DDLoss`
- regularizers: ``cls(params, *, num_classes, feature_dims, registry)``; a :class:`Regularizer`
- evaluators: ``cls(params)``; an :class:`Evaluator`

See ``docs/plugins.md`` for the prose version with an example.
"""

from __future__ import annotations

import hashlib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from .errors import DataError


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes only ints/floats (or None): then true/false is a mistake."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numbers_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_numbers_only(a) for a in args)
    return annotation in (int, float)


class NumbersModel(BaseModel):
    """Numbers are finite (no ``.inf``/``.nan``), and a number field refuses ``true``
    (Pydantic would read it as 1)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields and _numbers_only(
                cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


class Params(NumbersModel):
    """Base of every component's parameters model: unknown keys are errors; numbers are
    finite and never booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ComponentRef(BaseModel):
    """A reference to another component inside a parameters model, e.g. a critic.

    Written inline in YAML as ``{name: linear, out_dim: 128}``: every key but ``name``
    is a parameter of the referenced component. Subclasses fix the plugin ``kind`` so the
    registry can validate the nested parameters too (errors then name the full key path,
    e.g. ``regularizer.critic.out_dim``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: ClassVar[str] = ""
    name: str = Field(min_length=1, description="registered plugin name, or package:name")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `backbone: convnet` is short for `backbone: {name: convnet}`
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CriticRef(ComponentRef):
    kind: ClassVar[str] = "critics"


class BackboneRef(ComponentRef):
    kind: ClassVar[str] = "backbones"


class AugmentationRef(ComponentRef):
    kind: ClassVar[str] = "augmentations"


@dataclass(frozen=True)
class DataInfo:
    """What components need to know about a data set without its pixels."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    #: False for data where a horizontal flip changes the class meaning (digits).
    flip_ok: bool = True


def class_table(labels: Tensor, num_classes: int) -> Tensor:
    """(C, W) indices of every class's samples in order (W the largest class), padded -1."""
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(width, device=labels.device)
    gather = (starts[:, None] + pos[None, :]).clamp(max=len(labels) - 1)
    return torch.where(pos[None, :] < counts[:, None], order[gather], -1)


@dataclass
class RealData:
    """A labelled image data set held as tensors, normalised, with per-class indices.

    Images are float32 ``(N, C, H, W)`` in the data set's normalised space; labels
    int64 ``(N,)`` in ``[0, num_classes)``.
    """

    info: DataInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    #: identity recorded in provenance: name, split, size, sha256 of the raw content
    identity: dict[str, Any] = field(default_factory=dict)
    #: training images held out for choosing settings (:meth:`hold_out`); None without
    val_images: Tensor | None = None
    val_labels: Tensor | None = None
    _by_class: Tensor | None = field(default=None, repr=False)
    _counts: Tensor | None = field(default=None, repr=False)

    def to(self, device: torch.device | str) -> RealData:
        """Return a copy living on ``device`` (real data stays there for the whole run)."""
        return RealData(
            self.info,
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            dict(self.identity),
            None if self.val_images is None else self.val_images.to(device),
            None if self.val_labels is None else self.val_labels.to(device),
        )

    def hold_out(self, per_class: int, seed: int) -> RealData:
        """Move ``per_class`` training images of every class into a validation split.

        Which images move depends only on ``seed`` and the training labels (a generator of
        its own, never the run's random stream), so every run with the same ``seed`` holds
        out the same images. The returned set's training split no longer contains them;
        its ``identity`` records the split (``validation``: per class, seed, size and a
        hash of the held-out indices).
        """
        if self.val_images is not None:
            raise DataError(f"data set {self.info.name!r} already holds out a validation split")
        counts = torch.bincount(self.train_labels.cpu(), minlength=self.info.num_classes)
        if int(counts.min()) <= per_class:
            c = int(counts.argmin())
            raise DataError(
                f"validation.per_class is {per_class} but class {c} of {self.info.name!r} "
                f"has only {int(counts[c])} training images (at least one must remain)"
            )
        table = class_table(self.train_labels.cpu(), self.info.num_classes)
        gen = torch.Generator().manual_seed(int(seed))
        keys = torch.rand(table.shape, generator=gen).masked_fill(table < 0, 2.0)
        pick = keys.topk(per_class, dim=1, largest=False).indices
        held = table.gather(1, pick).reshape(-1).sort().values  # class-major, then index
        keep = torch.ones(len(self.train_labels), dtype=torch.bool)
        keep[held] = False
        dev = self.train_labels.device
        held_d, keep_d = held.to(dev), keep.to(dev)
        digest = hashlib.sha256(held.numpy().astype("<i8").tobytes()).hexdigest()
        identity = {**self.identity, "size": int(keep.sum()),
                    "validation": {"per_class": int(per_class), "seed": int(seed),
                                   "size": int(len(held)), "indices_sha256": digest}}
        return RealData(
            self.info, self.train_images[keep_d], self.train_labels[keep_d],
            self.test_images, self.test_labels, identity,
            self.train_images[held_d], self.train_labels[held_d],
        )

    def eval_split(self, split: str) -> tuple[Tensor, Tensor]:
        """Images and labels an evaluator scores on: ``test`` or ``validation``."""
        if split == "test":
            return self.test_images, self.test_labels
        if split == "validation":
            if self.val_images is None or self.val_labels is None:
                raise DataError(
                    f"split 'validation' was asked for but data set {self.info.name!r} holds "
                    "no validation split; add `validation: {per_class: N, seed: S}` to the "
                    "recipe that distills the set (docs/recipes.md)"
                )
            return self.val_images, self.val_labels
        raise ValueError(f"unknown split {split!r} (test or validation)")

    def _index(self) -> tuple[Tensor, Tensor]:
        if self._by_class is None:
            self._by_class = class_table(self.train_labels, self.info.num_classes)
            self._counts = torch.bincount(self.train_labels, minlength=self.info.num_classes)
        return self._by_class, self._counts  # type: ignore[return-value]

    def class_counts(self) -> Tensor:
        return self._index()[1]

    def sample_per_class(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` distinct training images of every class in one vectorised step.

        Returns images ``(C * n, ...)`` grouped by class (class 0 first) and their labels.
        ``n`` is capped at the smallest class size.
        """
        table, counts = self._index()
        n = min(n, int(counts.min()))
        if n <= 0:
            raise ValueError("a class of the training set has no images")
        # random keys, padding pushed to the end, then the n smallest keys per class
        keys = torch.rand(table.shape, generator=generator, device=table.device)
        keys = keys.masked_fill(table < 0, 2.0)
        pick = keys.topk(n, dim=1, largest=False).indices
        idx = table.gather(1, pick).reshape(-1)
        return self.train_images[idx], self.train_labels[idx]


#: where ``Backbone.features`` takes each block's tensor (see :class:`Backbone`)
Tap = Literal["output", "pre_pool", "pre_activation"]
TAPS: tuple[str, ...] = ("output", "pre_pool", "pre_activation")

#: modules recognised as a block's closing nonlinearity / pooling in a Sequential block
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def check_tap(tap: str) -> None:
    """Reject an unknown tap name, listing the known ones."""
    if tap not in TAPS:
        raise ValueError(f"unknown feature tap {tap!r}; known taps: {', '.join(TAPS)}")


class Backbone(nn.Module):
    """A network split into K blocks whose outputs are exposed as features.

    ``features(x)`` returns the output of each block (K tensors, each ``(B, ...)``);
    ``classify(last)`` maps the last block's output to logits ``(B, num_classes)``.
    ``forward`` composes the two. ``embed`` is the flattened last block output, the
    embedding used by distribution matching.

    ``features(x, tap=...)`` chooses where each block's tensor is taken:

    - ``"output"`` (default): the block's output, what the next block receives;
    - ``"pre_pool"``: after the block's closing nonlinearity, before its pooling (the
      output itself where the block has no pooling);
    - ``"pre_activation"``: before the block's closing nonlinearity (for ConvNet: after
      conv and norm).

    The network computed is the same whatever the tap; only the returned tensors differ.

    A subclass that stores its blocks in ``self.blocks`` (an ``nn.ModuleList`` applied in
    order) and its head in ``self.classifier`` (applied to the flattened last block) gets
    ``features`` and ``classify`` for free; others override them. Taps come free too
    where each block is an ``nn.Sequential`` whose last nonlinearity module (ReLU,
    LeakyReLU, Sigmoid, Tanh, GELU, ELU, SiLU) closes it, optionally followed by one
    pooling module; other blocks override :meth:`tap_block`.
    """

    blocks: nn.ModuleList
    classifier: nn.Module

    def features(self, x: Tensor, tap: Tap = "output") -> list[Tensor]:
        out = []
        if tap == "output":  # the default path: block after block, nothing else
            for block in self.blocks:
                x = block(x)
                out.append(x)
            return out
        check_tap(tap)
        for k in range(len(self.blocks)):
            tapped, x = self.tap_block(k, x, tap)
            out.append(tapped)
        return out

    def tap_block(self, k: int, x: Tensor, tap: Tap) -> tuple[Tensor, Tensor]:
        """Run block ``k`` on ``x``; return (the tensor at ``tap``, the block's output).

        The default handles ``nn.Sequential`` blocks laid out as ``[..., act, (pool)]``.
        """
        block = self.blocks[k]
        layers = list(block) if isinstance(block, nn.Sequential) else [block]
        act = max((i for i, m in enumerate(layers) if isinstance(m, _ACTIVATIONS)),
                  default=None)
        if act is None or any(not isinstance(m, _POOLS) for m in layers[act + 1:]):
            raise ValueError(
                f"{type(self).__name__} block {k + 1} is not [..., activation, (pool)]; "
                f"feature tap {tap!r} needs the backbone to override tap_block"
            )
        for m in layers[:act]:
            x = m(x)
        pre_act = x
        x = layers[act](x)
        pre_pool = x
        for m in layers[act + 1:]:
            x = m(x)
        return (pre_act if tap == "pre_activation" else pre_pool if tap == "pre_pool"
                else x), x

    def classify(self, last: Tensor) -> Tensor:
        return self.classifier(last.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x)[-1])

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[-1].flatten(1)


def tapped_features(net: nn.Module, x: Tensor, tap: str = "output") -> list[Tensor]:
    """``net.features(x, tap=tap)`` for any backbone, including one that predates taps.

    The default tap calls ``net.features(x)`` exactly as always, so a third-party backbone
    whose ``features`` takes no ``tap`` keeps working wherever block outputs are used;
    another tap on such a backbone is an error naming it.
    """
    if tap == "output":
        return net.features(x)
    check_tap(tap)
    try:
        params = inspect.signature(net.features).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}
    if "tap" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(
            f"backbone {type(net).__name__} does not support feature taps: its "
            f"features(x) takes no 'tap' argument, so tap {tap!r} is unavailable (subclass "
            f"mim4dd_kit.contracts.Backbone, or add 'tap' to features; docs/plugins.md)"
        )
    return net.features(x, tap=tap)


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


@dataclass
class LossOutput:
    """What a DD loss hands to the engine for one iteration.

    ``loss`` is the scalar L_DD. When the engine asked for features, ``syn_feats`` and
    ``real_feats`` hold one tensor per backbone block (``(M, ...)`` and ``(N, ...)``),
    computed by the networks the loss's method prescribes (SPEC section 2); synthetic
    features carry gradient to the images, real ones need not.
    """

    loss: Tensor
    syn_feats: list[Tensor] | None = None
    syn_labels: Tensor | None = None
    real_feats: list[Tensor] | None = None
    real_labels: Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    """This process's part of a multi-process run: rank ``rank`` of ``world_size``.

    In a sharded run every rank draws the same full real batch (same seed, same random
    stream) and keeps only its slice of each class's rows (:meth:`rows`); a DD loss then
    returns a *partial* loss whose sum over ranks is the single-process loss, and the
    engine sums gradients over ranks. ``world_size == 1`` (the default) is an ordinary
    run: :meth:`rows` keeps everything and :meth:`sum` is the identity.
    See ``docs/distributed.md``.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, labels: Tensor, num_classes: int) -> Tensor:
        """Indices (in order) of the rows of a batch with ``labels`` (N,) this rank keeps.

        Each class's rows, in batch order, are split as ``torch.tensor_split`` splits them
        into ``world_size`` parts (uneven splits allowed: the first ``n % world_size``
        ranks get one more row; a rank may get none); rank r keeps part r of every class.
        """
        n = labels.shape[0]
        if not self.active:
            return torch.arange(n, device=labels.device)
        counts = torch.bincount(labels, minlength=num_classes)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(order)
        pos[order] = torch.arange(n, device=labels.device) - starts[labels[order]]
        base, extra = counts // self.world_size, counts % self.world_size
        lo = self.rank * base + extra.clamp(max=self.rank)
        hi = lo + base + (extra > self.rank).to(base.dtype)
        keep = (pos >= lo[labels]) & (pos < hi[labels])
        return keep.nonzero().squeeze(1)

    def sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over ranks in place (``all_reduce`` SUM) and return it."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


@dataclass
class RunContext:
    """Everything a DD loss may use; built once per run by the engine."""

    data: RealData
    ipc: int
    batch_real: int
    device: torch.device
    make_backbone: Callable[[], Backbone]
    augment: Augmentation | None
    seed: int
    #: the recipe's backbone as ``{"name": ..., **params}`` (keys for cached artefacts)
    backbone_spec: dict[str, Any] = field(default_factory=dict)
    #: where losses may cache artefacts shared across runs (e.g. expert trajectories)
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/mim4dd_kit").expanduser())
    #: the recipe's dataset as ``{"name": ..., **params}`` (keys for cached artefacts)
    dataset_spec: dict[str, Any] = field(default_factory=dict)
    #: this process's part of a multi-process run (``Shard()``: the whole batch)
    shard: Shard = field(default_factory=Shard)
    #: activation bytes per chunk of gradient-free real-data passes on a CPU
    #: (``mim4dd_kit/chunked.py``; 0 = whole batches)
    chunk_bytes: int = 8 * 2**20
    #: multi-formation factor of the stored set (``synthetic.formation``); ``compute``
    #: receives the decoded set (mim4dd_kit/formation.py)
    formation: int = 1
    #: where the regularizer's features are taken in each block (``Backbone.features``'s
    #: ``tap``; set by the engine from the regularizer's ``tap`` parameter)
    feature_tap: str = "output"


@dataclass
class SyntheticState:
    """The learnable synthetic set during a run."""

    images: Tensor  # (M, C, H, W), requires grad
    labels: Tensor  # (M,)
    lr: Tensor | None = None  # learnable scalar, where the method learns one


class DDLoss(Protocol):
    """A dataset-distillation loss (``mdk.dd_losses``).

    ``compute`` returns L_DD for one outer iteration; with ``want_features`` it also
    returns the per-block features of both sides for a regularizer. It may keep state
    (a network trained between outer steps, expert buffers) in ``state_dict`` /
    ``load_state_dict`` so runs resume exactly. ``learns_lr`` tells the engine to create
    a learnable lr; an optional ``initial_lr`` (float) is where it starts unless the
    recipe sets ``synthetic.lr_init``. ``shardable = True`` (optional class attribute)
    declares that the loss honours ``ctx.shard``: it keeps only its rank's real rows and
    returns a partial loss whose sum over ranks is the full loss (docs/distributed.md);
    multi-process runs refuse losses without it.

    Optional hooks, each absent by default (the engine then behaves as without them; see
    docs/plugins.md): ``image_steps`` (int) image-optimiser steps per iteration, each a
    ``compute`` -> backward -> step; ``init_images(syn)`` called once, under ``no_grad``,
    after the engine initialised the stored set; ``after_step(syn)`` called under
    ``no_grad`` after every image step, with the stored set (e.g. a projection). ``syn``
    given to ``compute`` is the set decoded by ``ctx.formation``; the hooks get the stored set.
    """

    learns_lr: ClassVar[bool]

    def compute(
        self, syn: SyntheticState, iteration: int, want_features: bool
    ) -> LossOutput: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Regularizer(Protocol):
    """An MI regularizer (``mdk.regularizers``), an ``nn.Module``.

    Called as ``reg(syn_feats, syn_labels, real_feats, real_labels)`` and returns the
    already weighted scalar added to L_DD. Its own parameters (critic heads) are trained
    jointly with the images; ``lr`` is the learning rate the engine gives them.
    ``shardable = True`` (optional class attribute) declares that it accepts real features
    split over ranks: the engine then sets its ``shard`` attribute and expects a partial
    loss (and ``last_logs``) whose sums over ranks are the full values.
    """

    lr: float

    def __call__(
        self,
        syn_feats: list[Tensor],
        syn_labels: Tensor,
        real_feats: list[Tensor],
        real_labels: Tensor,
    ) -> Tensor: ...

    def parameters(self): ...


@dataclass
class EvalRequest:
    """A synthetic set handed to an evaluator, with what it needs to train on it."""

    images: Tensor
    labels: Tensor
    lr: float | None
    data: RealData
    device: torch.device
    seed: int
    #: the backbone the set was distilled with (``name`` plus parameters), if known
    backbone: BackboneRef | None
    #: the augmentation the run used, if known
    augmentation: AugmentationRef | None


class Evaluator(Protocol):
    """Scores a synthetic set (``mdk.evaluators``); returns a JSON-serialisable dict."""

    def evaluate(
        self, request: EvalRequest, registry: Any, progress: Callable[..., None] | None = None
    ) -> dict[str, Any]: ...


class DatasetRef(ComponentRef):
    kind: ClassVar[str] = "datasets"


class LossRef(ComponentRef):
    kind: ClassVar[str] = "dd_losses"


class RegularizerRef(ComponentRef):
    kind: ClassVar[str] = "regularizers"


class EvaluatorRef(ComponentRef):
    kind: ClassVar[str] = "evaluators"


class LoggerRef(ComponentRef):
    """An experiment tracker (mim4dd_kit/tracking.py)."""

    kind: ClassVar[str] = "loggers"
