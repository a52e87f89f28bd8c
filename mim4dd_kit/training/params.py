"""The parameters shared by plugins' ``Params`` models, importable without torch: the
evaluation protocol's settings (:class:`ProtocolParams`, re-exported by :mod:`.protocol`)
and the ``checkpoint`` option of the unrolling losses (re-exported by :mod:`.unroll`).

Parameters models import only this module, so that a recipe validates without torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from ..api.params import AugmentationRef, Params
from ..core.errors import SyntheticSetError

if TYPE_CHECKING:
    from ..api.results import EvalRequest


def _check_checkpoint(value: Any) -> bool | int:
    if isinstance(value, bool) or (isinstance(value, int) and value >= 1):
        return value
    raise ValueError("checkpoint must be false (off), true (segments of one step) or a "
                     "segment length in unrolled steps, an integer >= 1")


#: the ``checkpoint`` parameter of the unrolling losses (``bptt``, ``mtt``)
CheckpointOption = Annotated[bool | int, BeforeValidator(_check_checkpoint)]


def checkpoint_field(what: str) -> Any:
    """The ``checkpoint`` field of a loss's ``Params``; ``what`` names the unrolled steps."""
    return Field(False, description=f"gradient checkpointing of the {what}: false off, "
                 "true or k recompute them in the backward pass in segments of k steps "
                 "(true: 1), storing only parameters at segment borders")


class ProtocolParams(Params):
    """The training settings of the evaluation protocol, shared by every evaluator that
    trains networks on a synthetic set (``train_from_scratch``, ``cross_arch``, ``cka``,
    ``mi_estimate``)."""

    epochs: int = Field(300, ge=1, description="training epochs (paper: 300)")
    lr: float = Field(0.01, gt=0, description="SGD lr when the set has no learned lr")
    use_learned_lr: bool = Field(True, description="use the set's learned lr if any")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, ge=1)
    augmentation: AugmentationRef | None = Field(
        default_factory=lambda: AugmentationRef(name="dsa"),
        description="augmentation during training (protocol: DSA); null for none",
    )
    split: Literal["test", "validation"] = Field(
        "test", description="real images the trained networks are scored on: the data "
        "set's test split, or the training images the recipe's `validation` held out of "
        "distillation (for choosing settings without looking at the test split)"
    )

    def build_augmentation(self, registry: Any, info: Any) -> Any:
        """The configured augmentation for ``info``'s images, or None."""
        if self.augmentation is None:
            return None
        return registry.build("augmentations", self.augmentation, data_info=info)

    def lr_for(self, request: EvalRequest) -> float:
        """The training lr: the set's learned lr when it has one and it is wanted. A learned
        lr that is not a positive number (a distillation whose lr went through zero) is
        refused with what to do instead."""
        if not (self.use_learned_lr and request.lr is not None):
            return self.lr
        lr = float(request.lr)
        if not (math.isfinite(lr) and lr > 0):
            raise SyntheticSetError(
                f"the set's learned lr is {lr:.4g}, not a positive number: the distillation "
                "that made it drove its lr through zero (lower synthetic.lr or "
                "synthetic.lr_lr and distill again), or score it at a fixed lr with "
                "--set <evaluator>.use_learned_lr=false (and <evaluator>.lr=...)"
            )
        return lr


#: ``batched`` of the evaluators that train several networks
Batched = bool | Literal["auto"]
BATCHED_HELP = (
    "train the networks together, stacked under torch.func.vmap (same results as one by "
    "one up to float rounding); auto: on CUDA only, since on a CPU one by one is faster "
    "(docs/performance.md); architectures with running statistics (BatchNorm) or that do "
    "not run under vmap fall back to one by one"
)
