"""The step counts behind the analyses' progress bar: each plan equals the steps taken."""

import torch

from mim4dd_kit import meter
from mim4dd_kit.contracts import EvaluatorRef
from mim4dd_kit.evaluate import run_evaluators
from mim4dd_kit.registry import default_registry

SMALL = {"name": "convnet", "width": 8, "depth": 2}


class Recorder:
    def __init__(self):
        self.plans, self.done = [], 0

    def plan(self, steps, label):
        self.plans.append((label, steps))

    def advance(self, steps):
        self.done += steps


def test_every_evaluator_plans_exactly_the_steps_it_takes():
    reg = default_registry()
    data = reg.build("datasets", {"name": "digits"}).load()
    images, labels = data.sample_per_class(2)  # 20 images
    refs = [EvaluatorRef.model_validate(x) for x in [
        {"name": "train_from_scratch", "models": 2, "epochs": 3, "batch_size": 8,
         "backbone": SMALL},
        {"name": "cka", "epochs": 2, "real_epochs": 1, "backbone": SMALL},
        {"name": "mi_estimate", "epochs": 2, "critic_steps": 3, "backbone": SMALL},
        {"name": "cross_arch", "epochs": 1, "models": 1,
         "backbones": [{"name": "mlp", "width": 8}, SMALL]},
    ]]
    sink = Recorder()
    with meter.reporting(sink):
        run_evaluators(refs, images, labels, None, data, device=torch.device("cpu"), seed=0,
                       registry=reg)
    train = len(data.train_labels)
    # 2 networks x 3 epochs x ceil(20/8); S 2 epochs + R 1 epoch over the real split;
    # 2 epochs + 3 critic steps; one network per backbone; nested plans not counted twice
    assert sink.plans == [("train_from_scratch", 18), ("cka", 2 + -(-train // 256)),
                          ("mi_estimate", 5), ("cross_arch", 2)]
    assert sink.done == sum(n for _, n in sink.plans)


def test_without_a_sink_nothing_is_reported_and_plans_nest():
    sink = Recorder()
    meter.advance(5)  # no sink: ignored
    with meter.reporting(sink):
        with meter.planned(10, "outer"):
            with meter.planned(4, "inner"):
                meter.advance(3)
    meter.advance(2)
    assert sink.plans == [("outer", 10)] and sink.done == 3
