"""Gradient checkpointing of the unroll shared by BPTT and MTT (``checkpoint`` option):
the same loss and meta-gradients as the kept graph, the same random draws, bounded memory,
and validation of the option."""

import weakref

import pytest
import torch
import torch.nn.functional as F
from helpers import MIM, merged, set_up_run
from pydantic import ValidationError

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.core.errors import RecipeError
from mim4dd_kit.dd_losses.bptt import BPTT
from mim4dd_kit.dd_losses.mtt import MTT
from mim4dd_kit.training.unroll import FeaturesAndLogits, unroll

# --- the unroll itself (float64, a BatchNorm ConvNet, random minibatches and augmentation)


def _problem(norm: str = "batch", n: int = 12):
    torch.manual_seed(0)
    net = ConvNet(ConvNet.Params(width=4, depth=2, norm=norm), channels=1, num_classes=3,
                  image_size=(8, 8)).double()
    model = FeaturesAndLogits(net)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    images = torch.randn(n, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(n) % 3
    real = torch.randn(9, 1, 8, 8, dtype=torch.float64)
    return model, params, buffers, images, labels, real, torch.arange(9) % 3


def _jitter(x):
    """A random per-sample augmentation on the global RNG, differentiable in x."""
    scale = 1 + 0.2 * torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device)
    return x * scale + 0.05 * torch.randn_like(x)


def _meta(problem, seed=3, **kw):
    """(loss, d/d images, d/d lr), the RNG state after the call, and the buffers after it."""
    model, params, buffers, images, labels, real, real_y = problem
    buffers = {k: v.clone() for k, v in buffers.items()}
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(seed)
    w = unroll(model, params, buffers, images, labels, lr, augment=_jitter, **kw)
    rng_after = torch.get_rng_state()
    _, logits = torch.func.functional_call(model, ({**w, **buffers},), (real,))
    loss = F.cross_entropy(logits, real_y)
    return (loss.detach(), *torch.autograd.grad(loss, [images, lr])), rng_after, buffers


@pytest.mark.parametrize("kw", [
    {"momentum": 0.9, "batch_syn": 5},                                 # BPTT-like
    {"momentum": 0.0, "batch_syn": 5, "minibatch": "epoch"},           # MTT-like
    {"momentum": 0.9, "batch_syn": 5, "keep_from": 3},                 # truncated prefix
    {"momentum": 0.5},                                                 # whole set per step
])
def test_checkpointed_unroll_equals_the_kept_graph(kw):
    problem = _problem()
    plain, rng_plain, bufs_plain = _meta(problem, steps=7, **kw)
    for k in (1, 2, 3, 7, 10):  # 3 does not divide 7; 10 is longer than the unroll
        got, rng, bufs = _meta(problem, steps=7, checkpoint=k, **kw)
        # the same forward steps, but the checkpointed segments run without a graph, so
        # autograd-free kernels may order their sums differently: float64 rounding (eps
        # 2.2e-16) compounded over 7 steps, with a wide margin
        torch.testing.assert_close(got[0], plain[0], rtol=1e-12, atol=1e-14)
        for a, b in zip(got[1:], plain[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        # the replay restored and then gave back the RNG (the same draws: exact), and left
        # the live buffers alone (running statistics of the graph-free forward: rounding)
        assert torch.equal(rng, rng_plain)
        for name, value in bufs_plain.items():
            torch.testing.assert_close(bufs[name], value, rtol=1e-12, atol=1e-14, msg=name)
    # the draws do matter: another seed gives other gradients, so the replay must have
    # drawn the same minibatches and augmentations as the forward pass
    other, _, _ = _meta(problem, seed=4, steps=7, **kw)
    assert not torch.allclose(other[1], plain[1], rtol=1e-6, atol=0)


def test_checkpoint_only_asks_for_the_gradients_needed():
    model, params, buffers, images, labels, real, real_y = _problem("none")
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    fixed = images.detach()  # images that take no gradient: only the lr does
    grads = []
    for k in (0, 2):
        w = unroll(model, params, buffers, fixed, labels, lr, steps=4, momentum=0.9,
                   checkpoint=k)
        _, logits = torch.func.functional_call(model, (w,), (real,))
        grads.append(torch.autograd.grad(F.cross_entropy(logits, real_y), lr)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="checkpoint"):
        unroll(model, params, buffers, fixed, labels, lr, steps=2, momentum=0.0,
               checkpoint=-1)


def test_a_gradient_of_the_meta_gradient_is_the_same():
    # create_graph in the outer backward: the replay's graph must reach the inputs
    model, params, buffers, images, labels, real, real_y = _problem("none")
    results = []
    for k in (0, 2):
        lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)
        w = unroll(model, params, buffers, images, labels, lr, steps=5, momentum=0.9,
                   checkpoint=k, augment=_jitter)
        _, logits = torch.func.functional_call(model, (w,), (real,))
        (g_lr,) = torch.autograd.grad(F.cross_entropy(logits, real_y), lr, create_graph=True)
        results.append((g_lr.detach(), *torch.autograd.grad(g_lr, [images, lr])))
    assert results[0][1].abs().max() > 0
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


class _Box:
    """What the pack hook hands autograd: freed when the graph node that saved it is."""

    def __init__(self, tensor):
        self.tensor = tensor


class _LiveSaved:
    """Peak bytes of the tensors autograd holds (saved-tensor hooks; shared storage is
    counted once per save, so this over-counts, the same way for every variant)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        box = _Box(t)
        weakref.finalize(box, self._free, size)
        return box

    def _free(self, size):
        self.live -= size

    def unpack(self, box):
        return box.tensor


def _peak_saved(steps: int, k: int) -> int:
    model, params, buffers, images, labels, real, real_y = _problem("none", n=30)
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    meter = _LiveSaved()
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        w = unroll(model, params, buffers, images, labels, lr, steps=steps, momentum=0.9,
                   checkpoint=k)
        _, logits = torch.func.functional_call(model, (w,), (real,))
        F.cross_entropy(logits, real_y).backward()
    return meter.peak


def test_checkpointing_bounds_the_memory_the_graph_holds():
    plain = {s: _peak_saved(s, 0) for s in (4, 8)}
    ckpt = {s: _peak_saved(s, 1) for s in (4, 8)}
    # the kept graph grows with every step's activations ...
    assert plain[8] > 1.7 * plain[4]
    # ... the checkpointed one only by parameters and velocity per step (~2 x 0.7 KiB
    # here, against ~60 KiB of activations per step)
    assert ckpt[8] - ckpt[4] < 0.1 * (plain[8] - plain[4])
    assert ckpt[8] < 0.4 * plain[8]


# --- the option on the plugins

# float32 forward tolerance: the checkpointed forward runs its steps without a graph (other
# convolution kernels, other summation order, other thread splits under load), so the loss
# agrees only up to rounding; float32 eps is 1.2e-7, a few ulps per op compound over 5
# inner steps (seen: 3.715143919 vs 3.715144396, 1.3e-7 relative), and 1e-5 leaves ~100x.
F32_LOSS = {"rtol": 1e-5, "atol": 1e-6}


BPTT_CHANGES = {
    "name": "tiny_bptt_ckpt",
    "synthetic": {"iterations": 2, "learn_lr": True},
    "dd_loss": {"name": "bptt", "inner_steps": 5, "batch_syn": 10, "augment": True},
    "output": {"checkpoint_every": 0},
}

MTT_CHANGES = {
    "name": "tiny_mtt_ckpt",
    "synthetic": {"ipc": 2, "iterations": 2, "lr": 100.0, "batch_real": 8},
    "dd_loss": {"name": "mtt", "num_experts": 2, "max_start_epoch": 2, "expert_epochs": 1,
                "syn_steps": 5, "batch_syn": 8, "expert_batch": 512},
    "output": {"checkpoint_every": 0},
}


pytestmark = pytest.mark.usefixtures("module_cache")


def _with_checkpoint(loss, ctx, value):
    params = type(loss.params).model_validate({**loss.params.model_dump(), "checkpoint": value})
    return type(loss)(params, ctx=ctx)


def _loss_and_grads(loss, syn, seed, want_features=False, reg=None):
    syn.images.grad = None
    syn.lr.grad = None
    torch.manual_seed(seed)
    out = loss.compute(syn, 0, want_features)
    total = out.loss
    if reg is not None:
        total = total + reg(out.syn_feats, out.syn_labels, out.real_feats, out.real_labels)
    total.backward()
    return out.loss.detach(), syn.images.grad.clone(), syn.lr.grad.clone(), torch.rand(())


@pytest.mark.parametrize("changes", [BPTT_CHANGES, MTT_CHANGES], ids=["bptt", "mtt"])
def test_plugins_give_the_same_loss_and_gradients_checkpointed(tiny_recipe, tmp_path,
                                                               changes):
    # the tiny recipe's DSA augmentation draws inside every inner step
    r = set_up_run(tiny_recipe(**merged(changes, {"regularizer": MIM})), tmp_path)
    assert r.loss.params.checkpoint is False  # the default: the kept graph
    plain = _loss_and_grads(r.loss, r.syn, 5)
    for value in (True, 2):
        ckpt = _loss_and_grads(_with_checkpoint(r.loss, r.ctx, value), r.syn, 5)
        torch.testing.assert_close(ckpt[0], plain[0], **F32_LOSS)
        torch.testing.assert_close(ckpt[1], plain[1], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ckpt[2], plain[2], rtol=1e-5, atol=1e-7)
        assert torch.equal(ckpt[3], plain[3])  # the run's stream moved the same way
    # with the regularizer's features (they reach the unrolled parameters too)
    plain = _loss_and_grads(r.loss, r.syn, 6, True, r.reg)
    ckpt = _loss_and_grads(_with_checkpoint(r.loss, r.ctx, True), r.syn, 6, True, r.reg)
    for a, b in zip(ckpt[:3], plain[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [BPTT, MTT])
def test_the_option_validates(cls, tiny_recipe):
    assert cls.Params().checkpoint is False
    assert cls.Params(checkpoint=True).checkpoint is True
    assert cls.Params(checkpoint=4).checkpoint == 4
    for bad in (0, -2, 2.5, "yes", None):
        with pytest.raises(ValidationError, match="checkpoint must be false"):
            cls.Params(checkpoint=bad)
    name = cls.__name__.lower()
    with pytest.raises(RecipeError, match=r"dd_loss\.checkpoint"):
        tiny_recipe(dd_loss={"name": name, "checkpoint": -1})


def test_checkpoint_with_truncation_in_bptt(tiny_recipe, tmp_path):
    r = set_up_run(tiny_recipe(**merged(BPTT_CHANGES, {"dd_loss": {"truncate": 3}})), tmp_path)
    plain = _loss_and_grads(r.loss, r.syn, 8)
    ckpt = _loss_and_grads(_with_checkpoint(r.loss, r.ctx, 2), r.syn, 8)
    torch.testing.assert_close(ckpt[0], plain[0], **F32_LOSS)
    for a, b in zip(ckpt[1:3], plain[1:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
