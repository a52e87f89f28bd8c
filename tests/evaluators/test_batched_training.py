"""Stacked (vmap) training of evaluation networks equals training them one by one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mim4dd_kit.api import AugmentationRef, BackboneRef, EvalRequest
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.runtime import isolated_rng
from mim4dd_kit.evaluators import train_from_scratch as tfs
from mim4dd_kit.evaluators.train_from_scratch import TrainFromScratch
from mim4dd_kit.training import batched as batched_mod
from mim4dd_kit.training.batched import (
    RngStreams,
    StackedNetworks,
    batching_obstacle,
    train_networks,
)
from mim4dd_kit.training.compiled import cpu_compiler_available
from mim4dd_kit.training.loop import accuracy, train_network

CPU = torch.device("cpu")
CONVNET = {"name": "convnet", "width": 8, "depth": 2, "norm": "instance"}
MLP = {"name": "mlp", "width": 16, "depth": 2}
SEEDS = [3, 3 + 7919, 3 + 2 * 7919]
#: parameters of stacked and one-by-one training agree to this after the runs below;
#: the difference is float rounding of batched kernels (observed about 3e-8)
PARAM_ATOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    reg = default_registry()
    data = reg.build("datasets", {"name": "digits"}).load()
    gen = torch.Generator().manual_seed(0)
    images, labels = data.sample_per_class(3, generator=gen)  # 30 images, 10 classes
    dsa = reg.build("augmentations", {"name": "dsa"}, data_info=data.info)
    return reg, data, images, labels, dsa


def _builder(reg, data, spec):
    info = data.info
    return lambda: reg.build("backbones", spec, channels=info.channels,
                             num_classes=info.num_classes, image_size=info.image_size)


def _train(setup, spec, batched, *, dsa=False, epochs=4, build=None):
    reg, data, images, labels, aug = setup
    return train_networks(
        build or _builder(reg, data, spec), SEEDS, images, labels, device=CPU, epochs=epochs,
        lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8,
        augment=aug if dsa else None, batched=batched,
    )


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("spec", [CONVNET, MLP], ids=["convnet", "mlp"])
@pytest.mark.parametrize("dsa", [False, True], ids=["plain", "dsa"])
def test_stacked_training_equals_one_by_one(setup, spec, dsa):
    """4 epochs of 4 steps (last batch 6), lr decay after epoch 2: same parameters within
    PARAM_ATOL and the very same test accuracies."""
    reg, data, images, labels, _ = setup
    together = _train(setup, spec, True, dsa=dsa)
    alone = _train(setup, spec, False, dsa=dsa)
    assert together.batched and together.reason is None and together.stack is not None
    assert not alone.batched
    for a, b in zip(together.nets, alone.nets, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=PARAM_ATOL, rtol=0)
    test_x, test_y = data.test_images, data.test_labels
    acc_together = together.accuracies(test_x, test_y)
    assert acc_together == alone.accuracies(test_x, test_y)
    # the stacked test pass agrees with testing each written-back network on its own
    assert acc_together == [accuracy(net, test_x, test_y) for net in together.nets]
    # the networks are distinct (own streams) and did train
    first, second = _params(together.nets[0]), _params(together.nets[1])
    assert not torch.equal(first[0], second[0])
    with isolated_rng(SEEDS[0]):
        init = _params(_builder(reg, data, spec)())
    assert not any(torch.equal(p, q) for p, q in zip(init, first, strict=True))


def test_one_by_one_is_the_documented_protocol(setup):
    """The fallback path is train_network under isolated_rng(seed) per network, exactly."""
    reg, data, images, labels, dsa = setup
    alone = _train(setup, CONVNET, False, dsa=True, epochs=3)
    for seed, net in zip(SEEDS, alone.nets, strict=True):
        with isolated_rng(seed, CPU):
            ref = _builder(reg, data, CONVNET)()
            train_network(ref, images, labels, epochs=3, lr=0.05, momentum=0.9,
                          weight_decay=5e-4, batch_size=8, augment=dsa)
        assert all(torch.equal(p, q) for p, q in zip(_params(net), _params(ref), strict=True))


def test_lr_decay_is_applied_in_stacked_training(setup, monkeypatch):
    """3 epochs of 4 steps: lr 0.05 in epoch 0, x0.1 from epoch 3 // 2 = 1 on, in both
    paths, and the parameters still agree."""
    used: list[float] = []
    step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    together = _train(setup, MLP, True, epochs=3)
    assert used == pytest.approx([0.05] * 4 + [0.005] * 8)
    used.clear()
    alone = _train(setup, MLP, False, epochs=3)
    assert used == pytest.approx(([0.05] * 4 + [0.005] * 8) * len(SEEDS))
    for a, b in zip(together.nets, alone.nets, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=PARAM_ATOL, rtol=0)


def test_caller_stream_is_untouched(setup):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    _train(setup, MLP, True, dsa=True, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_batchnorm_falls_back_to_one_by_one(setup):
    spec = {**CONVNET, "norm": "batch"}
    reg, data, *_ = setup
    reason = batching_obstacle(_builder(reg, data, spec)())
    assert reason is not None and "BatchNorm2d" in reason and "running statistics" in reason
    assert batching_obstacle(_builder(reg, data, CONVNET)()) is None
    together = _train(setup, spec, True, epochs=2)
    alone = _train(setup, spec, False, epochs=2)
    assert not together.batched and together.reason == reason and together.stack is None
    for a, b in zip(together.nets, alone.nets, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
        # running statistics were updated as in ordinary training
        assert not torch.equal(a.blocks[0][1].running_mean, torch.zeros(8))


class _DropoutMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5),
                                  nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def test_network_failing_under_vmap_falls_back(setup):
    """Random layers raise under vmap (randomness='error'): trained one by one instead."""
    together = _train(setup, None, True, epochs=1, build=_DropoutMLP)
    alone = _train(setup, None, False, epochs=1, build=_DropoutMLP)
    assert not together.batched
    assert "vmap" in together.reason and "RuntimeError" in together.reason
    for a, b in zip(together.nets, alone.nets, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))


def test_rng_streams_continue_each_stream(setup):
    with torch.random.fork_rng():
        streams = RngStreams(CPU)
        for seed in (1, 2):
            streams.add(seed)
        with streams.use(0):
            a1 = torch.rand(2)
        with streams.use(1):
            b1 = torch.rand(2)
        with streams.use(0):
            a2 = torch.rand(2)
    torch.manual_seed(1)
    assert torch.equal(torch.cat([a1, a2]), torch.rand(4))
    torch.manual_seed(2)
    assert torch.equal(b1, torch.rand(2))


def test_stacked_logits_match_each_network(setup):
    reg, data, images, _, _ = setup
    nets = []
    for seed in SEEDS[:2]:
        torch.manual_seed(seed)
        nets.append(_builder(reg, data, CONVNET)().eval())
    stack = StackedNetworks(nets)
    stack.base.eval()
    out = stack.logits(images[:5])
    assert out.shape == (2, 5, 10)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[i], net(images[:5]), atol=1e-6, rtol=0)


def _request(setup, seed=5):
    reg, data, images, labels, _ = setup
    return EvalRequest(images, labels, None, data, CPU, seed, BackboneRef(**CONVNET),
                       AugmentationRef(name="dsa"))


def _evaluate(setup, **params):
    reg = setup[0]
    base = {"models": 3, "epochs": 2, "lr": 0.05, "batch_size": 8}
    seen = []
    ev = TrainFromScratch(TrainFromScratch.Params(**{**base, **params}))
    result = ev.evaluate(_request(setup), reg, lambda i, n, acc: seen.append((i, n, acc)))
    return result, seen


def test_evaluator_batched_modes_agree(setup):
    together, seen = _evaluate(setup, batched=True)
    alone, _ = _evaluate(setup, batched=False)
    capped, _ = _evaluate(setup, batched=True, batch_models=2)
    auto, _ = _evaluate(setup)  # auto: one by one on a CPU
    assert auto["batched"] is False and auto["accuracies"] == alone["accuracies"]
    assert together["batched"] is True and "reason" not in together
    assert alone["batched"] is False and "batched: false" in alone["reason"]
    assert capped["batched"] is True
    assert together["accuracies"] == alone["accuracies"] == capped["accuracies"]
    assert len(together["accuracies"]) == 3
    assert [(i, n) for i, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [acc for *_, acc in seen] == together["accuracies"]


def test_evaluator_records_batchnorm_fallback(setup):
    result, _ = _evaluate(setup, models=2, epochs=1, batched=True,
                          backbone={**CONVNET, "norm": "batch"})
    assert result["batched"] is False and "running statistics" in result["reason"]


def test_evaluator_trains_only_this_ranks_networks(setup, monkeypatch):
    """With 2 ranks, rank 1 trains networks 1 and 3 of 4 (seeds seed + 7919 i) and joins
    the per-index accuracies; here the join is replaced by a stand-in for rank 0's part."""
    full, _ = _evaluate(setup, models=4, epochs=1)
    seen_seeds: list[list[int]] = []
    real = batched_mod.train_networks

    def spy(build, seeds, *args, **kwargs):
        seen_seeds.append(list(seeds))
        return real(build, seeds, *args, **kwargs)

    def gather(local, n):
        assert sorted(local) == [1, 3] and n == 4
        return [full["accuracies"][0], local[1], full["accuracies"][2], local[3]]

    monkeypatch.setattr(tfs.distributed, "world", lambda: (1, 2))
    monkeypatch.setattr(tfs.distributed, "gather_indexed", gather)
    monkeypatch.setattr(tfs, "train_networks", spy)
    split, _ = _evaluate(setup, models=4, epochs=1)
    assert seen_seeds == [[5 + 7919, 5 + 3 * 7919]]
    assert split["accuracies"] == full["accuracies"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stacked_training_equals_one_by_one_on_cuda(setup, monkeypatch):
    """On CUDA the batch order comes from the device generator: its state is kept per
    network too. TF32 off, so only summation order differs between the two paths."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    reg, data, images, labels, dsa = setup
    cuda = torch.device("cuda")
    info = data.info

    def build():
        return reg.build("backbones", CONVNET, channels=info.channels,
                         num_classes=info.num_classes, image_size=info.image_size).to(cuda)

    runs = [
        train_networks(build, SEEDS, images.to(cuda), labels.to(cuda), device=cuda, epochs=4,
                       lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8, augment=dsa,
                       batched=b)
        for b in (True, False)
    ]
    assert runs[0].batched and not runs[1].batched
    for a, b in zip(runs[0].nets, runs[1].nets, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    test_x, test_y = data.test_images.to(cuda), data.test_labels.to(cuda)
    assert runs[0].accuracies(test_x, test_y) == runs[1].accuracies(test_x, test_y)


def _one_thread_sequential(setup, spec, *, dsa, epochs):
    reg, data, images, labels, aug = setup
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_networks(
            _builder(reg, data, spec), SEEDS, images, labels, device=CPU, epochs=epochs,
            lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8,
            augment=aug if dsa else None, batched=False, workers=1)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("dsa", [False, True], ids=["plain", "dsa"])
def test_networks_on_one_thread_workers_equal_one_thread_one_by_one(setup, workers, dsa):
    """Each network on its own generator (its seed's stream after the build) and one
    thread: bit for bit the networks of one-by-one training with one torch thread, for
    any number of workers."""
    reg, data, images, labels, aug = setup
    ref = _one_thread_sequential(setup, CONVNET, dsa=dsa, epochs=3)
    got = train_networks(
        _builder(reg, data, CONVNET), SEEDS, images, labels, device=CPU, epochs=3,
        lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8,
        augment=aug if dsa else None, batched=False, workers=workers)
    for a, b in zip(got.nets, ref.nets, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))


def test_worker_training_reports_epochs_and_leaves_the_callers_stream(setup):
    from mim4dd_kit.core import progress

    reg, data, images, labels, aug = setup
    seen = []
    state = torch.get_rng_state()
    with progress.counting_epochs(seen.append):
        train_networks(_builder(reg, data, CONVNET), SEEDS, images, labels, device=CPU,
                       epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=8,
                       augment=aug, batched=False, workers=2)
    assert sum(seen) == 2 * len(SEEDS)  # every network's every epoch, once
    assert torch.equal(torch.get_rng_state(), state)


def test_augmentations_without_a_generator_train_one_after_another(setup):
    reg, data, images, labels, aug = setup
    calls = []

    def plain_flip(x):  # draws from the global stream: workers could not keep it exact
        calls.append(len(x))
        return x.flip(3) if torch.rand(()) < 0.5 else x

    def run(workers):
        torch.manual_seed(0)
        return train_networks(_builder(reg, data, MLP), SEEDS, images, labels, device=CPU,
                              epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4,
                              batch_size=8, augment=plain_flip, batched=False,
                              workers=workers)

    got, ref = run(2), run(1)  # the fallback is the one-after-another path itself
    assert calls
    for a, b in zip(got.nets, ref.nets, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
    assert batched_mod._takes_generator(aug) and not batched_mod._takes_generator(plain_flip)


def test_a_failing_worker_raises_in_the_caller(setup):
    reg, data, images, labels, aug = setup

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(64, 10)

        def forward(self, x):
            raise RuntimeError("broken forward")

    with pytest.raises(RuntimeError, match="broken forward"):
        train_networks(Broken, SEEDS, images, labels, device=CPU, epochs=1, lr=0.05,
                       momentum=0.9, weight_decay=5e-4, batch_size=8, batched=False,
                       workers=2)


@pytest.mark.skipif(not cpu_compiler_available(),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_training_follows_eager_training_up_to_float_rounding(setup):
    """Compiled forward and backward on the workers: the same draws as eager training, so
    after a few epochs the parameters differ by float rounding only."""
    reg, data, images, labels, aug = setup
    kw = dict(device=CPU, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4,
              batch_size=8, augment=aug, batched=False, workers=2)
    eager = train_networks(_builder(reg, data, CONVNET), SEEDS, images, labels, **kw)
    comp = train_networks(_builder(reg, data, CONVNET), SEEDS, images, labels, compiled=True,
                          **kw)
    for a, b in zip(comp.nets, eager.nets, strict=True):
        for p, q in zip(_params(a), _params(b), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_compiled_training_without_a_compiler_warns_and_trains_eagerly(setup, monkeypatch):
    from mim4dd_kit.training import compiled

    reg, data, images, labels, aug = setup
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    monkeypatch.setattr(compiled, "_warned", [])
    kw = dict(device=CPU, epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4,
              batch_size=8, augment=None, batched=False)
    with pytest.warns(RuntimeWarning, match="no C..? compiler"):
        got = train_networks(_builder(reg, data, CONVNET), SEEDS[:1], images, labels,
                             compiled=True, **kw)
    ref = train_networks(_builder(reg, data, CONVNET), SEEDS[:1], images, labels, **kw)
    assert all(torch.equal(p, q) for p, q in zip(_params(got.nets[0]), _params(ref.nets[0]),
                                                 strict=True))
