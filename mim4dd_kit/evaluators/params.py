"""Parameters models of the built-in evaluators, importable without torch.

Reached through the ``mdk.params.evaluators`` entry points (pyproject.toml) when a recipe
is validated; each evaluator class keeps its model as ``Params``. The protocol settings
they share are :class:`~mim4dd_kit.training.params.ProtocolParams`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..api.params import BackboneRef, CriticRef
from ..training.params import BATCHED_HELP, Batched, ProtocolParams

ProtocolName = Literal["mim4dd", "dc", "dsa", "dm", "mtt", "bptt"]

#: each paper's own evaluation settings; a preset fills the fields a recipe leaves unset
#: (sources, file:line, in docs/components/train_from_scratch.md)
PROTOCOLS: dict[str, dict[str, Any]] = {
    # MIM4DD paper sec. 3.1: 5 networks x 300 epochs (the toolkit's defaults)
    "mim4dd": {},
    # DatasetCondensation main.py: 20 networks, 300 epochs without augmentation
    "dc": {"models": 20, "epochs": 300, "augmentation": None},
    # main.py with --method DSA: 1000 epochs with DSA
    "dsa": {"models": 20, "epochs": 1000},
    # main_DM.py: 1000 epochs with DSA
    "dm": {"models": 20, "epochs": 1000},
    # mtt-distillation distill.py: 5 networks x 1000 epochs with DSA at the learned lr
    "mtt": {"models": 5, "epochs": 1000, "use_learned_lr": True},
    # RememberThePast: 10 networks x 300 epochs, lr 0.01 fixed, no augmentation, no weight
    # decay, no lr schedule, batches of 640
    "bptt": {"models": 10, "epochs": 300, "augmentation": None, "weight_decay": 0.0,
             "lr": 0.01, "use_learned_lr": False, "lr_decay": False, "batch_size": 640},
}
#: the settings a protocol decides (what an evaluation record lists as resolved)
PROTOCOL_FIELDS = ("models", "epochs", "lr", "use_learned_lr", "momentum", "weight_decay",
                   "batch_size", "augmentation", "lr_decay")
#: the backbones ``cross_arch`` trains unless told otherwise (DC's cross-architecture table)
DEFAULT_BACKBONES = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18")


class TrainFromScratchParams(ProtocolParams):
    protocol: ProtocolName = Field(
        "mim4dd", description="evaluation preset: mim4dd (paper: 5 x 300 epochs, DSA), "
        "dc, dsa, dm, mtt or bptt (each paper's own protocol); fields set explicitly "
        "override the preset"
    )
    lr_decay: bool = Field(
        True, description="lr x0.1 after half the epochs (DC code base); false: a "
        "constant lr (BPTT)"
    )
    models: int = Field(5, ge=1, description="networks trained (paper: 5)")
    backbone: BackboneRef | None = Field(
        None, description="network to train; default: the one the set was distilled "
        "with, else convnet"
    )
    batched: Batched = Field("auto", description=BATCHED_HELP)
    batch_models: int | None = Field(
        None, ge=1, description="at most this many networks train together (memory "
        "grows with it); null: all of this process's networks at once",
    )
    compile: bool = Field(
        False, description="networks trained one by one go through torch.compile "
        "(forward and backward; 2 networks x 300 epochs on 2 workers of a 2-core CPU: "
        "118 -> 92 s, compilation included); the values differ from eager training by float "
        "rounding, so accuracies are comparable with it statistically, not bit for bit"
    )
    workers: int | None = Field(
        None, ge=1, description="on a CPU, networks trained one by one: this many train at "
        "once, each on one thread, so no thread waits for a sibling on a busy machine and "
        "the accuracies do not depend on the count (they equal a run with one torch "
        "thread); 1: one after another on all of torch's threads; null: torch's thread "
        "count (docs/performance.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        # the preset's values stand in for fields the spec does not set
        if isinstance(data, dict):
            preset = PROTOCOLS.get(data.get("protocol", "mim4dd"))
            if preset:  # an unknown name is left to the field's own check
                data = {**preset, **data}
        return data

    def resolved(self) -> dict[str, Any]:
        """The settings the protocol decides, as used."""
        out = {k: getattr(self, k) for k in PROTOCOL_FIELDS}
        aug = self.augmentation
        out["augmentation"] = None if aug is None else {"name": aug.name, **aug.params}
        return out


class CrossArchParams(ProtocolParams):
    backbones: list[BackboneRef] = Field(
        default_factory=lambda: [BackboneRef(name=n) for n in DEFAULT_BACKBONES],
        min_length=1,
        description="networks to train; uninstalled ones and those that cannot take "
        "the image size are skipped",
    )
    models: int = Field(5, ge=1, description="networks trained per backbone (paper: 5)")
    batched: Batched = Field("auto", description=BATCHED_HELP)
    batch_models: int | None = Field(
        None, ge=1, description="at most this many networks train together; null: all",
    )


class CKAParams(ProtocolParams):
    backbone: BackboneRef | None = Field(
        None, description="network of both sides; default: the set's, else convnet"
    )
    real_epochs: int = Field(
        20, ge=1, description="epochs of the real-trained network on the real training split"
    )
    probe: int = Field(1000, ge=2, description="real test images fed to both networks")
    method: Literal["auto", "gram", "feature"] = Field(
        "auto", description="CKA computation: Gram or feature form (same value)"
    )
    plot: bool = Field(True, description="draw cka.png when out_dir is given")
    out_dir: str | None = Field(
        None, description="directory for cka.json and cka.png; null writes nothing"
    )


class MIEstimateParams(ProtocolParams):
    backbone: BackboneRef | None = Field(
        None, description="network; default: the set's, else convnet"
    )
    network: Literal["trained", "random"] = Field(
        "trained",
        description="trained: fitted on the synthetic set by the evaluation protocol; "
        "random: freshly initialised (as DM samples it)",
    )
    critic: CriticRef = Field(
        default_factory=lambda: CriticRef(name="linear"),
        description="critic head fitted per layer (MIM4DD's default: linear)",
    )
    tau: float = Field(0.07, gt=0, description="temperature of the scores")
    normalize: bool = Field(True, description="L2-normalise critic embeddings")
    critic_steps: int = Field(200, ge=0, description="Adam steps fitting the critics")
    critic_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the critics")
    batch_real: int = Field(
        32, ge=1, description="real training images per class in each critic step"
    )
