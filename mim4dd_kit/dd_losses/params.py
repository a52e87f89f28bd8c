"""Parameters models of the built-in DD losses, importable without torch.

Reached through the ``mdk.params.dd_losses`` entry points (pyproject.toml) when a recipe
is validated; each loss class keeps its model as ``Params`` (``MTT.Params is MTTParams``),
validators included.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..api.params import Params, Tap
from ..training.params import CheckpointOption, checkpoint_field

#: gradient distances of the gradient-matching losses (:mod:`.gradient_matching`)
Distance = Literal["ours", "mse", "cos"]
#: DREAM's gradient distance; auto picks by data set (:mod:`.dream`)
Metric = Literal["auto", "mse", "l1"]

#: CAFE's fields that apply to one network schedule only
_FIXED_ONLY = ("outer_loop", "inner_loop")
_WATCHER_ONLY = ("lambda_1", "lambda_2", "window", "watch_per_class", "max_inner_epochs")


class DMParams(Params):
    layer: int = Field(
        -1,
        description="block whose flattened output is the embedding; -1 is the last "
        "block, the features before the classifier as in the DM paper",
    )


class DCParams(Params):
    outer_loop: int | None = Field(
        None, ge=1, description="image updates per network; None: reference get_loops "
        "by IPC (1 -> 1, 10 -> 10, 20 -> 20, 30 -> 30, 40 -> 40, 50 -> 50)"
    )
    inner_loop: int | None = Field(
        None, ge=0, description="epochs of network training on the synthetic set "
        "between image updates; None: get_loops by IPC (1, 50, 25, 20, 15, 10)"
    )
    net_lr: float = Field(0.01, gt=0, description="network SGD lr (reference lr_net)")
    net_momentum: float = Field(
        0.0, ge=0, lt=1, description="network SGD momentum (reference: none)"
    )
    batch_train: int = Field(
        256, ge=1, description="minibatch of the network's epochs (reference batch_train)"
    )
    distance: Distance = Field(
        "ours", description="gradient distance: ours (layer-wise 1 - cos per output "
        "unit), mse, cos (reference dis_metric)"
    )
    augment: bool = Field(
        False, description="siamese augmentation of the matched batches and per-sample "
        "augmentation of the network's epochs (DSA); DC uses none"
    )


class DSAParams(DCParams):
    augment: bool = Field(
        True, description="siamese augmentation of the matched batches and per-sample "
        "augmentation of the network's epochs (DSA)"
    )


class DSAKMeansParams(DSAParams):
    clusters: int | None = Field(
        None, ge=1, description="k-means centres = real images matched per class; None: "
        "synthetic.batch_real"
    )
    interval: int = Field(
        10, ge=1, description="calls between re-clusterings on one network; a new "
        "network always re-clusters"
    )
    kmeans_iters: int = Field(100, ge=1, description="Lloyd iterations at most")
    pool: int | None = Field(
        None, ge=1, description="real images per class that are clustered, drawn at "
        "random at each refresh; None: the whole class"
    )


class BPTTParams(Params):
    inner_steps: int = Field(
        150, ge=1, description="unrolled SGD steps per call (the RememberThePast README "
        "command: 150; its config default 20 is overridden there)"
    )
    inner_lr: float = Field(
        0.01, gt=0, description="inner SGD lr, fixed (reference bptt_optim.lr 0.01); "
        "with synthetic.learn_lr it is the learned lr's start instead"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="inner SGD momentum (reference 0.9)")
    batch_syn: int | None = Field(
        None, ge=1, description="synthetic images per inner step; None: the whole set"
    )
    augment: bool = Field(
        False, description="apply the run's augmentation to the synthetic batch of every "
        "inner step and to the real meta-batch (reference default: none)"
    )
    truncate: int | None = Field(
        None, ge=1, description="keep the graph of only the last N inner steps; None: all"
    )
    random_window: bool = Field(
        False, description="with truncate: unroll a random number of steps in "
        "[truncate, inner_steps] each call (random truncated BPTT)"
    )
    checkpoint: CheckpointOption = checkpoint_field("kept inner steps")

    @model_validator(mode="after")
    def _window(self) -> BPTTParams:
        if self.random_window and self.truncate is None:
            raise ValueError("random_window needs truncate")
        return self


class MTTParams(Params):
    syn_steps: int = Field(
        20, ge=1, description="student SGD steps on synthetic data per call (N; "
        "distill.py default 20)"
    )
    expert_epochs: int = Field(
        2, ge=1, description="expert epochs between start and target parameters (M; "
        "2 in most published settings)"
    )
    max_start_epoch: int = Field(
        20, ge=1, description="start epoch drawn uniformly from [0, max_start_epoch)"
    )
    batch_syn: int | None = Field(
        None, ge=1, description="synthetic images per student step; None: all"
    )
    num_experts: int = Field(100, ge=1, description="expert trajectories (buffer.py: 100)")
    train_epochs: int | None = Field(
        None, ge=1, description="epochs each expert is trained; None: max_start_epoch "
        "+ expert_epochs (mtt issue #4: later epochs are never used)"
    )
    expert_lr: float = Field(
        0.01, gt=0, description="SGD lr the experts are trained at (buffer.py "
        "--lr_teacher, default 0.01; the MTT README trains all its experts at this "
        "default); part of the buffer key"
    )
    lr_teacher: float = Field(
        0.01, gt=0, description="initial value of the learned synthetic lr (distill.py "
        "--lr_teacher); synthetic.lr_init overrides it when set. Not the experts' lr"
    )
    expert_batch: int = Field(256, ge=1, description="expert training batch (buffer.py)")
    expert_momentum: float = Field(
        0.0, ge=0, lt=1, description="expert SGD momentum (buffer.py: 0)"
    )
    expert_weight_decay: float = Field(
        0.0, ge=0, description="expert SGD weight decay (buffer.py: 0)"
    )
    buffer_seed: int = Field(0, description="seed of the expert trajectories")
    checkpoint: CheckpointOption = checkpoint_field("student steps")

    @model_validator(mode="after")
    def _enough_epochs(self) -> MTTParams:
        need = self.max_start_epoch - 1 + self.expert_epochs
        if self.train_epochs is not None and self.train_epochs < need:
            raise ValueError(
                f"train_epochs must be at least max_start_epoch - 1 + expert_epochs = "
                f"{need} (the latest target epoch), got {self.train_epochs}"
            )
        return self


class CAFEParams(Params):
    tap: Tap = Field(
        "pre_pool", description="where each block's aligned features are taken: "
        "pre_pool (reference: after the ReLU, before the pool), output or pre_activation"
    )
    layer_weights: list[float] | None = Field(
        None, description="weight of every block's alignment term at the tap (K values); "
        "None: 0.1 on every block but the last and 1 on the last (reference 0.1/0.1/1)"
    )
    output_weight: float = Field(
        1.0, ge=0, description="weight of the pooled final block output's alignment "
        "(reference --first_weight 1)"
    )
    embed_weight: float = Field(
        1.0, ge=0, description="weight of the second class-mean term on the final "
        "embedding, the same flattened final output (reference loss_output, weight 1)"
    )
    disc_weight: float = Field(
        0.01, ge=0, description="weight of the discrimination loss (reference inner_weight)"
    )
    temperature: float = Field(1.0, gt=0, description="divides the similarity logits")
    schedule: Literal["watcher", "fixed"] = Field(
        "watcher", description="network schedule: watcher (reference accuracy watchers, "
        "lambda_1/lambda_2) or fixed (DC's outer_loop/inner_loop)"
    )
    lambda_1: float = Field(
        0.04, gt=0, description="watcher: a network is replaced once its accuracy "
        "range over the last `window` image updates is below this (reference lambda_1)"
    )
    lambda_2: float = Field(
        0.03, gt=0, description="watcher: inner training stops once the accuracy range "
        "over the last `window` epochs exceeds this (reference lambda_2)"
    )
    window: int = Field(10, ge=2, description="watcher: readings per window (reference 10)")
    watch_per_class: int = Field(
        128, ge=1, description="watcher: real training images per class in each "
        "accuracy reading (reference 128)"
    )
    max_inner_epochs: int = Field(
        1000, ge=1, description="watcher: at most this many inner epochs per image "
        "update (the reference has no bound)"
    )
    outer_loop: int = Field(
        10, ge=1, description="fixed: calls between network re-initialisations (DC "
        "get_loops)"
    )
    inner_loop: int = Field(
        50, ge=0, description="fixed: network SGD steps on the synthetic set before a call"
    )
    net_lr: float = Field(0.01, gt=0, description="network SGD lr (reference lr_net)")
    net_momentum: float = Field(0.0, ge=0, lt=1, description="network SGD momentum")
    batch_train: int | None = Field(
        256, ge=1, description="synthetic images per network step; None: all"
    )

    @model_validator(mode="after")
    def _schedule_fields(self) -> CAFEParams:
        unused = _WATCHER_ONLY if self.schedule == "fixed" else _FIXED_ONLY
        given = sorted(set(unused) & self.model_fields_set)
        if given:
            other = "watcher" if self.schedule == "fixed" else "fixed"
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} only to schedule: {other}; "
                             f"remove {'it' if len(given) == 1 else 'them'} or set "
                             f"schedule: {other}")
        return self


class DREAMParams(Params):
    inner_loop: int = Field(
        100, ge=1, description="engine iterations (reference inner iterations) per "
        "matching network; a new network and a clamp follow each block of them "
        "(reference --inner_loop 100, --fix_iter 1)"
    )
    clusters: int | None = Field(
        None, ge=1, description="k-means centres = real images matched per class; None: "
        "synthetic.batch_real (reference --batch_real 128)"
    )
    interval: int = Field(
        10, ge=1, description="engine iterations between re-clusterings (reference "
        "--interval 10, counted within each network's inner loop)"
    )
    kmeans_iters: int = Field(
        100, ge=1, description="Lloyd iterations at most (fast_pytorch_kmeans max_iter)"
    )
    kmeans_input: Literal["pixel", "normalised"] = Field(
        "pixel", description="images the network embeds for k-means: pixel values in "
        "[0, 1] (reference: it embeds un-normalised images) or the normalised ones"
    )
    metric: Metric = Field(
        "auto", description="gradient distance: mse, l1, or auto (l1 on MNIST-like "
        "data, mse otherwise; reference misc/reproduce.py)"
    )
    match_bias: bool = Field(False, description="also match 1-D parameters (--bias)")
    match_fc: bool = Field(False, description="also match linear weights (--fc)")
    batch_syn_max: int = Field(
        128, ge=1, description="decoded synthetic images of a class matched at most, a "
        "random subset beyond it (reference --batch_syn_max)"
    )
    augment: bool = Field(
        True, description="siamese augmentation of each class's real and synthetic "
        "batch (one draw) and per-sample augmentation of the network's real batches"
    )
    net_lr: float = Field(0.01, gt=0, description="network SGD lr (reference --lr)")
    net_momentum: float = Field(0.9, ge=0, lt=1, description="network SGD momentum")
    net_weight_decay: float = Field(5e-4, ge=0, description="network SGD weight decay")
    net_data: int = Field(
        500, ge=0, description="real images the network trains on between inner "
        "iterations (reference --n_data: 500, CIFAR 2000); 0: no training"
    )
    net_batch: int | None = Field(
        None, ge=1, description="minibatch of that training; None: synthetic.batch_real "
        "(the reference's real loader batch)"
    )
    mix_p: float = Field(
        0.5, ge=0, le=1, description="cutmix probability per network batch (reference "
        "mix_p 0.5 on CIFAR/SVHN/MNIST/Fashion-MNIST, --mixup_net cut)"
    )
    cutmix_beta: float = Field(1.0, gt=0, description="cutmix Beta(beta, beta) (--beta)")
    init: Literal["kmeans", "engine"] = Field(
        "kmeans", description="kmeans: the stored set starts as k-means representatives "
        "(tiled by the formation factor; reference --init kmean / mix); engine: keep "
        "synthetic.init"
    )
    clamp: bool = Field(
        True, description="clamp the stored images to the [0, 1] pixel range at the "
        "start and after every inner_loop engine iterations"
    )
    pixel_step: bool = Field(
        True, description="scale the image gradient by 1/std^2 per channel, so that "
        "synthetic.lr and momentum act in [0, 1] pixel space as the reference's lr_img"
    )
