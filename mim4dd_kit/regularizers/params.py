"""The parameters model of the MIM4DD regularizer and its presets, importable without
torch.

Reached through the ``mdk.params.regularizers`` entry point (pyproject.toml) when a recipe
is validated; :class:`~mim4dd_kit.regularizers.mim4dd.MIM4DD` keeps it as ``Params``. The
fields are described in docs/components/mim4dd.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..api.params import CriticRef, Params

#: named settings; a recipe's explicit fields override the preset's
PRESETS: dict[str, dict[str, Any]] = {
    # today's objective: Eq. 2.15 read literally, flattened block outputs, one joint step
    "literal": {},
    # bounded start (CRD's self-normalised discriminator, about log C + 1 per layer),
    # low-dimensional critic input, critics trained before they steer the images, and a
    # weight tied to the base method's own gradient scale (see docs/components/mim4dd.md)
    "stable": {
        "discriminator": "crd",
        "critic_input": "channel_mean",
        "center": True,
        "critic_warmup": 50,
        "critic_steps": 1,
        "ramp": 20,
        "rho": 0.1,
    },
    # no critic network (the paper's Table 2 "w.o network"): the base method's own network
    # changes every iteration (DM, DSA) or every expert (MTT), so a learned critic has
    # nothing stable to fit; the scores compare its centred, normalised per-channel means
    # directly, under CRD's discriminator, one row per class on the synthetic side (its
    # mean), with the gradient tied to the DD gradient (rho 1) and capped at twice the
    # median of the last 9 DD norms (one outlying DD gradient no longer enlarges the
    # step). The setting the paired study chose on its validation split
    # (docs/mim_study.md). MTT's student and BPTT's unrolled model are taken as given for
    # the synthetic features (network_gradient false): as good in the paired cells run
    # both ways, at the base method's cost (docs/results.md, "Through the unroll or not").
    "critic_free": {
        "discriminator": "crd",
        "critic": {"name": "identity"},
        "critic_input": "channel_mean",
        "center": True,
        "synthetic_side": "class_mean",
        "critic_warmup": 0,
        "critic_steps": 0,
        "ramp": 20,
        "rho": 1.0,
        "rho_window": 9,
        "rho_cap": 2.0,
        "network_gradient": False,
    },
}
#: the preset a recipe gets when it names none
DEFAULT_PRESET = "critic_free"


class MIM4DDParams(Params):
    model_config = ConfigDict(populate_by_name=True)

    preset: Literal["critic_free", "literal", "stable"] = Field(
        DEFAULT_PRESET,
        description="named setting: 'critic_free' (the default) scores each class's "
        "mean of the centred, per-channel means of the base network's features "
        "against the real samples directly (no critic network) under CRD's "
        "discriminator, gradient tied to the DD one (rho 1); "
        "'literal' is Eq. 2.15-2.17 as printed (sigmoid, a linear critic on "
        "flattened block outputs, one joint step, lambda 0.8); 'stable' is the CRD "
        "discriminator with a linear critic on pooled input, critic warm-up and "
        "steps, a ramp and rho 0.1. Fields given explicitly override the preset's; "
        "an explicit lambda without an explicit rho weights by lambda",
    )
    lam: float = Field(
        0.8, ge=0, alias="lambda", description="lambda in Eq. 2.17 (paper: 0.8)"
    )
    strict_beta: bool = Field(
        True,
        description="enforce beta > 1 as Eq. 2.17 states; false allows the paper's "
        "Table 2 ablation values 0.5 and 1.0",
    )
    beta: float = Field(2.0, gt=0, description="layer weighting base in Eq. 2.17, > 1")
    tau: float = Field(0.07, gt=0, description="temperature of the scores")
    critic: CriticRef = Field(
        default_factory=lambda: CriticRef(name="linear"),
        description="critic head per layer (paper Table 2: one fc layer is best)",
    )
    normalize: bool = Field(True, description="L2-normalise critic embeddings")
    layers: list[int] | None = Field(
        None, description="1-based blocks to regularize; null means all K blocks"
    )
    critic_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the critics")
    discriminator: Literal["sigmoid", "prior", "crd"] = Field(
        "sigmoid",
        description="h = e^s / (e^s + B): 'sigmoid' B = 1 (Eq. 2.15 literal), 'prior' "
        "B = C - 1 (Eq. 2.12), 'crd' B = (C - 1) Z with Z a detached mean of e^s",
    )
    z_mode: Literal["fixed", "tracked"] = Field(
        "fixed",
        description="crd only: Z fixed at the first call (as contrastive distillation "
        "does) or tracked as a moving average of each call's mean e^s",
    )
    z_momentum: float = Field(
        0.9, ge=0, lt=1,
        description="crd, z_mode tracked: Z <- m Z + (1 - m) mean(e^s) per call",
    )
    tap: Literal["output", "pre_pool", "pre_activation"] = Field(
        "output",
        description="where each block's features are taken: its output (post-ReLU, "
        "post-pool), before its pooling, or before its closing nonlinearity (Eq. 2.4-2.6's "
        "W^k sigma(...)); the DD loss hands these over (Backbone.features tap)",
    )
    critic_input: Literal["flatten", "channel_mean"] = Field(
        "flatten",
        description="what a critic sees of a block's (B, C, H, W) features: all of it "
        "flattened, or the per-channel spatial mean (B, C)",
    )
    center: bool = Field(
        False,
        description="subtract the real batch's mean embedding (detached, over all "
        "ranks) from both sides' critic embeddings before the normalisation: removes "
        "the direction every post-ReLU feature (and the critic's bias) shares",
    )
    synthetic_side: Literal["samples", "class_mean"] = Field(
        "samples",
        description="what stands for the synthetic side in the score matrix: every "
        "synthetic sample (Eq. 2.13-2.16 as printed), or each class's mean feature "
        "(one row per class; the same as 'samples' at one image per class, and it "
        "moves only a class's mean at more, leaving the spread within a class to the "
        "base method)",
    )
    critic_steps: int = Field(
        0, ge=0,
        description="critic-only Adam steps per iteration on the iteration's detached "
        "features, before the joint step",
    )
    critic_warmup: int = Field(
        0, ge=0,
        description="critic-only steps at the run's first iteration (on its detached "
        "features), before anything touches the images",
    )
    ramp: int = Field(
        0, ge=0,
        description="ramp the weight (lambda, or rho) linearly from 0 over this many "
        "iterations; 0 = full weight from the start",
    )
    rho: float | None = Field(
        None, gt=0,
        description="gradient-relative weight: the regularizer's image gradient is "
        "rescaled each iteration to rho times the DD gradient's norm (replaces lambda); "
        "null = weight by lambda",
    )
    rho_window: int = Field(
        1, ge=1,
        description="with rho: the DD gradient norm that rho multiplies is capped at "
        "rho_cap times the median of the last rho_window iterations' norms (this one "
        "included), so one outlying DD gradient does not enlarge the regularizer's step; "
        "1 = no cap",
    )
    rho_cap: float = Field(
        2.0, gt=0,
        description="with rho_window > 1: the cap, as a multiple of that median (1 = "
        "never above the median)",
    )
    lr_gradient: bool = Field(
        False,
        description="with rho: let the (rescaled) regularizer gradient reach a learned "
        "lr (MTT, BPTT); off keeps the lr the base method's alone",
    )
    network_gradient: bool = Field(
        True,
        description="where the base method trains the synthetic side's network on the "
        "synthetic set (MTT's student, BPTT's unrolled model): let the regularizer's "
        "gradient reach the images through that training (true) or take the trained "
        "network as given (false: the gradient passes one forward pass instead of the "
        "whole unroll, and with rho the second backward costs one network's); no effect "
        "on DM, DC, DSA, DREAM and CAFE",
    )
    diagnostics_every: int = Field(
        10, ge=0,
        description="log gradient norms, MI bounds, score means and pixel std every N "
        "iterations into losses.jsonl (0 = off); costs one extra backward of the "
        "regularizer on those iterations",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", DEFAULT_PRESET)
        if name not in PRESETS:
            return data  # the Literal check reports it
        merged = {**PRESETS[name], **data}
        if ("lambda" in data or "lam" in data) and "rho" not in data:
            merged["rho"] = None  # an explicit lambda means: weight by lambda
        return merged

    @field_validator("beta")
    @classmethod
    def _beta_range(cls, beta: float, info: ValidationInfo) -> float:
        if info.data.get("strict_beta", True) and beta <= 1:
            raise ValueError(
                "must be > 1 (Eq. 2.17); set strict_beta: false to run the paper's "
                "beta ablation"
            )
        return beta

    @model_validator(mode="after")
    def _layers(self):
        if self.layers is not None and (not self.layers or min(self.layers) < 1):
            raise ValueError("layers must be a non-empty list of 1-based block indices")
        return self
