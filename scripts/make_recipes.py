"""Generate the shipped recipes from one table of published settings.

    python scripts/make_recipes.py            # rewrites recipes/ (the committed files)
    python scripts/make_recipes.py --out DIR  # writes the same files under DIR

Every generated file starts with a comment naming where each number comes from. The
tables below are the single source; edit them and re-run rather than editing the YAML.
tests/core/test_shipped_recipes.py checks that the committed files are this script's
output. ``recipes/quickstart.yaml`` is hand-written and not generated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1] / "recipes"

# -- data sets ---------------------------------------------------------------------------
#: DSA strategies from the DSA authors' README: no flip for digit data sets
FLIP = "color_crop_cutout_flip_scale_rotate"
NO_FLIP = "color_crop_cutout_scale_rotate"
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"classes": 10, "strategy": NO_FLIP, "title": "MNIST"},
    "cifar10": {"classes": 10, "strategy": FLIP, "title": "CIFAR-10"},
    "cifar100": {"classes": 100, "strategy": FLIP, "title": "CIFAR-100"},
    "fashion_mnist": {"classes": 10, "strategy": FLIP, "title": "Fashion-MNIST"},
}

#: the MIM4DD paper's Table 1 grid (data set -> IPCs) and its base methods
PAPER_GRID = {"mnist": (1, 10, 50), "cifar10": (1, 10, 50), "cifar100": (1, 10)}
PAPER_METHODS = ("mtt", "bptt", "dream")
#: Fashion-MNIST, the offline benchmark: every base method
FMNIST_IPCS = (1, 10, 50)
FMNIST_METHODS = ("dm", "dc", "dsa", "dream", "mtt", "bptt", "cafe")

# -- published constants ---------------------------------------------------------------
#: MIM4DD paper, section 3.1 / appendix A.2
PAPER = {"lr": 0.1, "milestones": [1800, 2800], "gamma": 0.5, "iterations": 5000,
         "batch": 256, "lambda": 0.8, "beta": 2.0}
#: the paper's objective read literally: the ablations and sweeps that reproduce its
#: Table 2 and Fig. 3 use it
MIM4DD_PAPER = {"name": "mim4dd", "preset": "literal", "lambda": PAPER["lambda"],
                "beta": PAPER["beta"], "tau": 0.07, "critic": {"name": "linear", "out_dim": 128}}
#: the setting the *_mim recipes ship: the one the paired study chose (docs/mim_study.md)
MIM4DD = {"name": "mim4dd", "preset": "critic_free"}
#: sweeps over the paper's knobs start from the literal objective
LITERAL_SET = ["regularizer.preset=literal"]
#: DC get_loops (VICO-UoE/DatasetCondensation utils.py): IPC -> (outer_loop, inner_loop)
GET_LOOPS = {1: (1, 1), 10: (10, 50), 50: (50, 10)}
#: CAFE (kaiwang960112/CAFE distill.py): 2,000 iterations, each a new network serving image
#: updates until its accuracy watcher fires; the image lr halves at 1,200 / 1,600 / 1,800.
#: Image updates per network by IPC: the means over the networks finished in a run of
#: benchmarks/cafe_watcher.py on Fashion-MNIST, ConvNet width 32 (IPC 10: 150 updates,
#: 6 networks; IPC 1: 101 updates, 6 networks; docs/components/cafe.md). IPC 50 was not
#: measured and takes IPC 10's value.
CAFE = {"networks": 2000, "updates_per_network": {1: 16, 10: 24, 50: 24},
        "lr_at": (0.6, 0.8, 0.9)}
#: MTT per-setting values, as its author gave them to DC-BENCH (methods/tm/readme.md)
MTT_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2,
                     "lr_img": 100.0, "lr_lr": 1e-07, "lr_teacher": 0.01, "zca": True},
    ("cifar10", 10): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20,
                      "lr_img": 100.0, "lr_lr": 1e-05, "lr_teacher": 0.001, "zca": True},
    ("cifar10", 50): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40,
                      "lr_img": 1000.0, "lr_lr": 1e-05, "lr_teacher": 0.001, "zca": False},
    ("cifar100", 1): {"syn_steps": 20, "expert_epochs": 3, "max_start_epoch": 20,
                      "lr_img": 1000.0, "lr_lr": 1e-05, "lr_teacher": 0.01, "zca": True},
    ("cifar100", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 20,
                       "lr_img": 1000.0, "lr_lr": 1e-05, "lr_teacher": 0.01, "zca": False},
}
#: MTT publishes nothing for MNIST / Fashion-MNIST (its code cannot load them). Our
#: choice: CIFAR-10's values at the same IPC for steps, epochs, lr_lr and lr_teacher, and
#: lr_img 1000, the value MTT uses wherever images are not ZCA-whitened (CIFAR-10 IPC 50,
#: CIFAR-100 IPC 10); no ZCA on grey digits/clothes.
MTT_OWN = {
    1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0,
        "lr_lr": 1e-07, "lr_teacher": 0.01, "zca": False},
    10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1000.0,
         "lr_lr": 1e-05, "lr_teacher": 0.001, "zca": False},
    50: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "lr_img": 1000.0,
         "lr_lr": 1e-05, "lr_teacher": 0.001, "zca": False},
}
#: buffer.py trains every expert at its default lr 0.01 (buffer.py:117; MTT readme.md:82);
#: the tables' lr_teacher is distill.py's initial learned lr only (distill.py:118)
MTT_EXPERT_LR = 0.01
#: BPTT reference settings (princetonvisualai/RememberThePast-DatasetDistillation): README
#: command (150 steps, minibatch 10 per class), configs (inner lr 0.01, momentum 0.9),
#: runner (clip 2, 64 real images per class)
BPTT = {"inner_steps": 150, "inner_lr": 0.01, "momentum": 0.9, "grad_clip": 2.0,
        "real_per_class": 64, "per_class_step": 10}
#: lambda values of the Fig. 3 sweep: the paper plots lambda without listing the values;
#: this grid brackets the default 0.8, and lambda 0 is the MTT baseline
LAMBDA_GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
#: a CPU-sized budget for the Fashion-MNIST ablation sweeps (quickstart's scale)
CPU_BUDGET = ["synthetic.iterations=150", "synthetic.batch_real=32", "backbone.width=64",
              "evaluators.0.models=2", "evaluators.0.epochs=200", "output.checkpoint_every=50"]

CONVNET = {"name": "convnet", "width": 128, "depth": 3, "norm": "instance",
           "activation": "relu", "pooling": "avg"}
EVALUATOR = {"name": "train_from_scratch", "models": 5, "epochs": 300}

SOURCES = {
    "paper": "MIM4DD paper (sec. 3.1, app. A.2): image lr 0.1 halved at 1800 and 2800, "
             "5000 iterations, batch 256, lambda 0.8, beta 2, one fc-layer critic.",
    "eval": "Evaluation: the MIM4DD protocol, 5 ConvNets x 300 epochs with DSA.",
    "dsa_aug": "DSA strategy from the DSA authors' README ({strategy}).",
    "convnet": "ConvNet-128 x 3 blocks, instance norm (DC/DSA/DM/MTT, MIM4DD sec. 3.1).",
}


#: DREAM reference (Yanqing0327/DREAM): argument.py defaults and misc/reproduce.py
DREAM_REF = {"niter": 2000, "inner_loop": 100, "interval": 10, "batch_real": 128, "factor": 2}
DREAM_TABLE: dict[str, dict[str, Any]] = {
    "cifar10": {"metric": "mse", "lr_img": 5e-3, "size": 32, "imsize_base": 32, "n_data": 2000,
                "line": "11-14", "why_lr": "misc/reproduce.py:13", "mix_p": 0.5,
                "why_mix": "argument.py:276-279", "aug_type": "color_crop_cutout",
                "why_aug": "argument.py:184-188"},
    "cifar100": {"metric": "mse", "lr_img": 5e-3, "size": 32, "imsize_base": 32,
                 "n_data": 2000, "line": "11-14", "why_lr": "misc/reproduce.py:13",
                 "mix_p": 0.5, "why_mix": "argument.py:276-279",
                 "aug_type": "color_crop_cutout", "why_aug": "argument.py:184-188"},
    "mnist": {"metric": "l1", "lr_img": 1e-4, "size": 28, "imsize_base": 28, "n_data": 500,
              "line": "22-24", "why_lr": "misc/reproduce.py:24", "mix_p": 0.0,
              "why_mix": "none: --mixup_net vanilla at factor > 1, misc/reproduce.py:25-28",
              "aug_type": "color_crop",
              "why_aug": "misc/reproduce.py:25-27 at factor > 1"},
    "fashion_mnist": {"metric": "l1", "lr_img": 1e-4, "size": 28, "imsize_base": 32,
                      "n_data": 500, "line": "31-33", "why_lr": "misc/reproduce.py:33",
                      "mix_p": 0.5, "why_mix": "argument.py:300-305",
                      "aug_type": "color_crop_cutout", "why_aug": "argument.py:184-188"},
}


# -- recipe builders -----------------------------------------------------------------------
def _per_class(total: int, classes: int) -> int:
    """Real images per class giving about ``total`` per batch (the toolkit counts per class)."""
    return max(1, math.ceil(total / classes))


def _synthetic(ipc: int, *, iterations: int, lr: float, batch_real: int, init: str = "real",
               schedule: bool = False, learn_lr: dict[str, float] | None = None
               ) -> dict[str, Any]:
    s: dict[str, Any] = {"ipc": ipc, "init": init, "iterations": iterations, "lr": lr,
                         "momentum": 0.5}
    if schedule:
        s["schedule"] = {"milestones": PAPER["milestones"], "gamma": PAPER["gamma"]}
    s["batch_real"] = batch_real
    if learn_lr:
        s.update({"learn_lr": True, **learn_lr})
    return s


def _mtt_settings(ds: str, ipc: int) -> tuple[dict[str, Any], str]:
    if (ds, ipc) in MTT_TABLE:
        return MTT_TABLE[(ds, ipc)], (
            "MTT constants (syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, "
            "lr_teacher, ZCA) from the MTT author's per-setting table in DC-BENCH "
            "methods/tm/readme.md.")
    return MTT_OWN[ipc], (
        "MTT publishes no settings for this data set; ours: CIFAR-10's syn_steps, "
        "expert_epochs, max_start_epoch, lr_lr and lr_teacher at the same IPC, lr_img 1000 "
        "(MTT's value without ZCA), no ZCA.")


def build(ds: str, ipc: int, method: str) -> tuple[dict[str, Any], list[str]]:
    """(recipe without name/regularizer, header lines) for one data set, IPC and method."""
    info = DATASETS[ds]
    c = info["classes"]
    dataset: dict[str, Any] = {"name": ds}
    header: list[str] = []
    loops = GET_LOOPS[ipc]
    aug: dict[str, Any] = {"name": "dsa", "strategy": info["strategy"]}
    if method == "dm":
        synthetic = _synthetic(ipc, iterations=20000, lr=1.0, batch_real=256)
        loss: dict[str, Any] = {"name": "dm"}
        header.append("DM constants from the DM reference code (VICO-UoE/DatasetCondensation "
                      "main_DM.py): image lr 1.0 (SGD, momentum 0.5), 20,000 iterations, 256 "
                      "real images per class, init real.")
    elif method in ("dc", "dsa"):
        synthetic = _synthetic(ipc, iterations=1000 * loops[0], lr=0.1, batch_real=256,
                               init="noise" if method == "dc" else "real")
        loss = {"name": method, "outer_loop": loops[0], "inner_loop": loops[1],
                "net_lr": 0.01, "batch_train": 256, "distance": "ours",
                "augment": method == "dsa"}
        header += [
            f"{method.upper()} constants from VICO-UoE/DatasetCondensation main.py: 1000 outer "
            f"iterations x outer_loop {loops[0]} image updates = {1000 * loops[0]} engine "
            f"iterations, (outer_loop, inner_loop) = {loops} from get_loops, image lr 0.1 "
            "(SGD, momentum 0.5), net lr 0.01, batch_real 256 per class, batch_train 256, "
            "distance 'ours'.",
            "Init: noise for DC (main.py default), real for DSA (the DSA README command uses "
            "--init real)." if method == "dc" else
            "Init real (the DSA README command uses --init real); siamese augmentation in the "
            "matching loss.",
            "DSA's own paper evaluates 1000 epochs x 20 networks; this recipe keeps the MIM4DD "
            "protocol (5 x 300) so that all methods are compared the same way.",
        ]
    elif method == "cafe":
        per_net = CAFE["updates_per_network"][ipc]
        iters = CAFE["networks"] * per_net
        synthetic = {"ipc": ipc, "init": "noise", "iterations": iters, "lr": 0.1,
                     "momentum": 0.5,
                     "schedule": {"milestones": [round(f * iters) for f in CAFE["lr_at"]],
                                  "gamma": 0.5},
                     "batch_real": 256}
        loss = {"name": "cafe", "tap": "pre_pool", "schedule": "watcher",
                "lambda_1": 0.04, "lambda_2": 0.03, "disc_weight": 0.01, "net_lr": 0.01,
                "batch_train": 256}
        header += [
            "CAFE constants from kaiwang960112/CAFE distill.py (argparse defaults and the "
            "README command): image lr 0.1 (SGD, momentum 0.5) halved at 1,200 / 1,600 / "
            "1,800 of 2,000 iterations (adjust_learning_rate), init noise, batch_real 256 "
            "per class, batch_train 256, lr_net 0.01, no DSA (--dsa_strategy None); "
            "pre-pool block features at 0.1 / 0.1 / 1 plus the pooled final map and the "
            "final embedding at 1, inner_weight 0.01; accuracy watchers lambda_1 0.04, "
            "lambda_2 0.03 (loss defaults).",
            f"The reference counts its 2,000 iterations in networks; here one engine "
            f"iteration is one image update: {CAFE['networks']} networks x {per_net} "
            f"updates per network ("
            + ("IPC 10's measured mean; IPC 50 not measured"
               if ipc == 50 else "measured mean, benchmarks/cafe_watcher.py")
            + f") = {iters}, the lr halved at the same fractions.",
        ]
    elif method == "dream":
        d = DREAM_TABLE[ds]
        # reference lr_img tuned by tune_lr_img (argument.py:46-65, applied at :420):
        # lr * ipc / 10 * (size / imsize_base)^2
        lr = d["lr_img"] * ipc / 10 * (d["size"] / d["imsize_base"]) ** 2
        synthetic = _synthetic(ipc, iterations=DREAM_REF["niter"] * 100, lr=float(f"{lr:.6g}"),
                               batch_real=DREAM_REF["batch_real"])
        synthetic["formation"] = DREAM_REF["factor"]
        loss = {"name": "dream", "inner_loop": DREAM_REF["inner_loop"],
                "interval": DREAM_REF["interval"], "metric": d["metric"],
                "net_data": d["n_data"], "mix_p": d["mix_p"]}
        aug = {"name": "dsa", "strategy": d["aug_type"]}
        header += [
            "DREAM (Liu et al., ICCV 2023), the loop of Yanqing0327/DREAM condense.py "
            "(python condense.py --reproduce -f 2, run.sh:2 / README; --match grad, "
            "REFERENCES.md): multi-formation factor 2 (argument.py:164-168, run.sh), stored "
            "set initialised from k-means representatives (argument.py:174-183, 361-363; "
            "condense.py:539-568).",
            f"{DREAM_REF['niter']} outer iterations (misc/reproduce.py:10) x inner_loop "
            f"{DREAM_REF['inner_loop']} (argument.py:210; condense.py:594 n_iter = niter * 100 "
            f"// inner_loop) = {DREAM_REF['niter'] * 100} engine iterations, each one image "
            f"step per class (condense.py:616-644); a new network every outer iteration "
            "(fix_iter 1, condense.py:599-608).",
            f"Image SGD momentum 0.5 (argument.py:241; condense.py:591) at lr_img "
            f"{d['lr_img']} ({d['why_lr']}) x ipc/10 x ({d['size']}/{d['imsize_base']})^2 = "
            f"{synthetic['lr']:.6g} in [0, 1] pixel space (dd_loss pixel_step).",
            f"Gradient distance {d['metric']} on conv weights (misc/reproduce.py:{d['line']}; "
            "--bias/--fc False, argument.py:200-201); 128 real images per class "
            "(argument.py:229-232) = k-means clusters, refreshed every 10 inner iterations "
            "(argument.py:123-126; condense.py:621-629).",
            f"Network trained on {d['n_data']} real images between inner iterations "
            f"(misc/reproduce.py:6,14; condense.py:647-656), SGD lr 0.01, momentum 0.9, wd 5e-4 "
            f"(argument.py:118-120), cutmix p {d['mix_p']} ({d['why_mix']}).",
            f"Matching augmentation {d['aug_type']} ({d['why_aug']}), here the toolkit's DSA "
            "with that strategy.",
        ]
        if ds == "fashion_mnist":
            header.append(
                "The reference's Fashion-MNIST path needs --size 28 (the default 224 sizes "
                "its ConvNet's classifier wrongly, argument.py:94, 300-305); with it, "
                "tune_lr_img scales by (28/32)^2.")
    elif method == "bptt":
        if ds.startswith("cifar"):
            dataset["zca"] = True
        synthetic = _synthetic(ipc, iterations=PAPER["iterations"], lr=PAPER["lr"],
                               batch_real=BPTT["real_per_class"], schedule=True)
        synthetic["grad_clip"] = BPTT["grad_clip"]
        loss = {"name": "bptt", "inner_steps": BPTT["inner_steps"], "inner_lr": BPTT["inner_lr"],
                "momentum": BPTT["momentum"], "augment": False, "checkpoint": True}
        per_class = BPTT["per_class_step"]
        if ipc > per_class:
            loss["batch_syn"] = per_class * c
        header += [
            "BPTT (Deng & Russakovsky, princetonvisualai/RememberThePast-DatasetDistillation "
            "@f49e631): 150 unrolled inner steps (README.md:26, 5th argument; the config's 20 "
            "is overridden), inner SGD lr 0.01 fixed and momentum 0.9 "
            "(configs/compressors_bptt_interventions.yml:50-54, used by "
            "models/compressor_bptt_standard.py:114,159), image gradient clipped at norm 2 "
            "(runners/sgld_runner_standard.py:216), image SGD momentum 0.5 "
            "(configs/compressors_bptt_interventions.yml:41), 64 real images per class for "
            "the meta-loss (runners/sgld_runner_standard.py:78), no augmentation "
            "(README.md:26 'none')"
            + (", ZCA (README.md:26 zca=1; the toolkit's ZCA is MTT's kornia form, see "
               "docs/components/bptt.md)" if ds.startswith("cifar") else "")
            + (f", {per_class} synthetic images per class per inner step (README.md:26 "
               f"minibatch 10), here {per_class * c} drawn from the whole set"
               if ipc > per_class else ", the whole set in every inner step (README.md:26 "
               "minibatch 10 >= IPC)")
            + ". Checkpointed unroll (same gradient, memory of one step's activations).",
            SOURCES["paper"].replace(", lambda 0.8, beta 2, one fc-layer critic", "")
            + " The paper's image lr, schedule and iteration count replace the reference's "
            "(lr 0.1 constant, 500,000 iterations: configs/compressors_bptt_interventions.yml:2; "
            "utils/command_parser.py:18).",
            "Init from real images; the reference starts from xavier-uniform noise "
            "(compressors/imgs_embedding_minibatch.py:40), see docs/components/bptt.md.",
        ]
    elif method == "mtt":
        m, where = _mtt_settings(ds, ipc)
        if m["zca"]:
            dataset["zca"] = True
        synthetic = _synthetic(
            ipc, iterations=PAPER["iterations"], lr=m["lr_img"],
            batch_real=_per_class(PAPER["batch"], c),
            learn_lr={"lr_lr": m["lr_lr"]})
        loss = {"name": "mtt", "syn_steps": m["syn_steps"], "expert_epochs": m["expert_epochs"],
                "max_start_epoch": m["max_start_epoch"], "lr_teacher": m["lr_teacher"],
                "expert_lr": MTT_EXPERT_LR}
        header += [
            where,
            "MTT (Cazenavette et al., CVPR 2022; GeorgeCazenavette/mtt-distillation @50dccea): "
            "experts trained by SGD at lr 0.01, no momentum or weight decay, batch 256, DSA on "
            "the real batches (buffer.py:73,117,118,129-130; utils.py:320-322; all the README's "
            "experts use this default, readme.md:82): expert_lr. lr_teacher only "
            "starts the learned synthetic lr (distill.py:118,435); images and that lr by SGD "
            "momentum 0.5 (distill.py:138-139); DSA on every student step (distill.py:358-359); "
            "5000 iterations (distill.py:431; MIM4DD agrees), MTT's lr_img without a schedule "
            "(MIM4DD's 0.1 halving schedule is for lr 0.1); 100 experts (buffer.py:116)."
            + (" ZCA whitening (kornia eps 0.1, utils.py:137-165) replaces mean/std "
               "normalisation." if m["zca"] else ""),
            f"Real batch for MIM4DD's features: 256 in all, {_per_class(256, c)} per class.",
        ]
    else:
        raise ValueError(method)
    recipe = {
        "seed": 0,
        "device": "auto",
        "dataset": dataset,
        "synthetic": synthetic,
        "backbone": dict(CONVNET),
        "dd_loss": loss,
        # CAFE's reference distils without augmentation unless --dsa_strategy is given
        "augmentation": None if method == "cafe" else aug,
        "evaluators": [dict(EVALUATOR)],
        "output": {"checkpoint_every": 1000 if method == "dream" else
                   500 if synthetic["iterations"] >= 5000 else 100},
    }
    header += [SOURCES["convnet"]]
    if method not in ("dream", "cafe"):
        header.append(SOURCES["dsa_aug"].format(strategy=info["strategy"]))
    header.append(SOURCES["eval"])
    return recipe, header


def recipe_for(ds: str, ipc: int, method: str, mim: bool) -> tuple[str, dict, list[str]]:
    name = f"{ds}_ipc{ipc}_{method}{'_mim' if mim else ''}"
    body, header = build(ds, ipc, method)
    title = DATASETS[ds]["title"]
    what = f"{method.upper()}{' + MIM4DD' if mim else ''} on {title}, IPC {ipc}."
    lines = [what, *header]
    recipe: dict[str, Any] = {"name": name, **body}
    if mim:
        recipe = _with_regularizer(recipe, dict(MIM4DD))
        lines.insert(1, "MIM4DD: the critic_free preset, the setting the paired study chose "
                        "(docs/mim_study.md); preset: literal gives the paper's Eq. 2.15-2.17 "
                        "as printed (lambda 0.8, one fc-layer critic).")
    return name, recipe, lines


def _with_regularizer(recipe: dict[str, Any], reg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in recipe.items():
        out[k] = v
        if k == "dd_loss":
            out["regularizer"] = reg
    return out


# -- YAML rendering (flow style for components, block style for settings) ------------------
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
BLOCK_KEYS = {"synthetic", "regularizer", "output"}


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    return s if _PLAIN.match(s) and s.lower() not in _RESERVED else json.dumps(s)


def _flow(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def render(data: dict[str, Any], header: list[str]) -> str:
    out = []
    for line in header:
        out += _wrap(line)
    for key, value in data.items():
        if isinstance(value, dict) and (key in BLOCK_KEYS
                                        or len(f"{key}: {_flow(value)}") > 100):
            out.append(f"{key}:")
            out += [f"  {k}: {_flow(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], (dict, str)) \
                and key != "grid":
            out.append(f"{key}:")
            out += [f"  - {_flow(v)}" for v in value]
        elif isinstance(value, dict) and key == "grid":
            out.append(f"{key}:")
            out += [f"  {k}: {_flow(v)}" for k, v in value.items()]
        else:
            out.append(f"{key}: {_flow(value)}")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 90) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width - 2:
            lines.append("# " + cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append("# " + cur)
    return lines


# -- everything that is generated --------------------------------------------------------------
def paper_grid() -> list[tuple[str, int, str, bool]]:
    return [(ds, ipc, m, mim) for ds, ipcs in PAPER_GRID.items() for ipc in ipcs
            for m in PAPER_METHODS for mim in (False, True)]


def fmnist_grid() -> list[tuple[str, int, str, bool]]:
    return [("fashion_mnist", ipc, m, mim) for ipc in FMNIST_IPCS for m in FMNIST_METHODS
            for mim in (False, True)]


def generate() -> dict[str, str]:
    """Relative path -> file text of every generated recipe and sweep."""
    files: dict[str, str] = {}
    for ds, ipc, method, mim in paper_grid() + fmnist_grid():
        name, recipe, lines = recipe_for(ds, ipc, method, mim)
        files[f"{name}.yaml"] = render(recipe, lines)

    # paper Table 2 ablations on CIFAR-10 IPC 10, MTT + MIM4DD (the paper's default base)
    base_name, base, base_lines = recipe_for("cifar10", 10, "mtt", True)
    base_lines = [base_lines[0], "MIM4DD read literally (preset: literal, Eq. 2.15-2.17 as "
                  "printed): lambda 0.8, beta 2, tau 0.07, one fc-layer critic (Table 2's best), "
                  "128-d embedding.", *base_lines[2:]]
    critics = {"identity": {"name": "identity"},
               "linear": {"name": "linear", "out_dim": 128},
               "mlp": {"name": "mlp", "out_dim": 128}}
    table2 = {"identity": 64.9, "linear": 65.9, "mlp": 65.3}
    for key, critic in critics.items():
        name = f"{base_name}_critic_{key}"
        reg = {**MIM4DD_PAPER, "critic": critic}
        recipe = {**base, "name": name, "regularizer": reg}
        lines = [f"Ablation (MIM4DD paper Table 2): critic '{key}' "
                 f"(paper: {table2[key]}% on CIFAR-10 IPC 10).", *base_lines]
        files[f"ablations/{name}.yaml"] = render(recipe, lines)
    for beta, acc in ((0.5, 62.8), (1.0, 63.8), (2.0, 66.0)):
        name = f"{base_name}_beta_{beta}"
        reg = dict(MIM4DD_PAPER)
        if beta <= 1:
            reg = {"name": "mim4dd", "lambda": reg["lambda"], "strict_beta": False,
                   **{k: v for k, v in reg.items() if k not in ("name", "lambda")}}
        reg["beta"] = beta
        recipe = {**base, "name": name, "regularizer": reg}
        lines = [f"Ablation (MIM4DD paper Table 2): beta {beta} (paper: {acc}%); beta <= 1 "
                 "is outside Eq. 2.17's beta > 1 and needs strict_beta: false.", *base_lines]
        files[f"ablations/{name}.yaml"] = render(recipe, lines)

    # sweeps: lambda (Fig. 3) on CIFAR-10, and all three ablations at CPU scale on F-MNIST
    files["sweeps/cifar10_ipc10_mtt_lambda.yaml"] = render(
        {"name": "cifar10_ipc10_mtt_lambda", "base": "../cifar10_ipc10_mtt_mim.yaml",
         "set": LITERAL_SET, "grid": {"regularizer.lambda": LAMBDA_GRID}},
        ["Effect of lambda (MIM4DD paper Fig. 3) on CIFAR-10 IPC 10 with MTT + MIM4DD; "
         "lambda 0 is the MTT baseline. The figure does not list its values; this grid "
         "brackets the default 0.8.",
         "Run: mdk sweep recipes/sweeps/cifar10_ipc10_mtt_lambda.yaml"])
    fm_base = "../fashion_mnist_ipc10_dm_mim.yaml"
    cpu_note = ("CPU-sized budget (the quickstart's scale: 150 iterations, 32 real images per "
                "class, ConvNet width 64, 2 networks x 200 epochs), DM + MIM4DD on "
                "Fashion-MNIST IPC 10.")
    files["sweeps/fashion_mnist_ipc10_dm_critic.yaml"] = render(
        {"name": "fashion_mnist_ipc10_dm_critic", "base": fm_base,
         "set": [*CPU_BUDGET, *LITERAL_SET],
         "grid": {"regularizer.critic": list(critics.values())}},
        ["Critic ablation (MIM4DD paper Table 2) at CPU scale.", cpu_note])
    files["sweeps/fashion_mnist_ipc10_dm_beta.yaml"] = render(
        {"name": "fashion_mnist_ipc10_dm_beta", "base": fm_base,
         "set": [*CPU_BUDGET, *LITERAL_SET, "regularizer.strict_beta=false"],
         "grid": {"regularizer.beta": [0.5, 1.0, 2.0]}},
        ["Beta ablation (MIM4DD paper Table 2) at CPU scale; strict_beta false admits "
         "beta <= 1.", cpu_note])
    files["sweeps/fashion_mnist_ipc10_dm_lambda.yaml"] = render(
        {"name": "fashion_mnist_ipc10_dm_lambda", "base": fm_base,
         "set": [*CPU_BUDGET, *LITERAL_SET],
         "grid": {"regularizer.lambda": [0.0, 0.4, 0.8, 1.2]}},
        ["Lambda sweep (MIM4DD paper Fig. 3) at CPU scale; lambda 0 is plain DM.", cpu_note])
    header = "Generated by scripts/make_recipes.py from its tables; edit those, not this file."
    return {path: "# " + header + "\n" + text for path, text in files.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output folder (default recipes/)")
    args = parser.parse_args(argv)
    for rel, text in generate().items():
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
