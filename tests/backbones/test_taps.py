"""Feature taps: ``features(x, tap=...)`` at output, pre_pool and pre_activation."""

import pytest
import torch
import torch.nn.functional as F
from mdk_plugin_example.convnet_gap import ConvNetGAP
from torch import Tensor, nn

from mim4dd_kit.api import TAPS, Backbone, tapped_features
from mim4dd_kit.config.registry import default_registry

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_ACTS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)


def _build(name: str, channels: int, size: int, **params):
    return default_registry().build("backbones", {"name": name, **params}, channels=channels,
                                    num_classes=5, image_size=(size, size))


CASES = [
    ("convnet", {"width": 8}, 1, 28),
    ("convnet", {"width": 8, "pooling": "max", "activation": "sigmoid", "norm": "batch"}, 3, 16),
    ("convnet", {"width": 8, "pooling": "none", "norm": "none", "activation": "leakyrelu",
                 "depth": 2}, 3, 8),
    ("convnet_d4", {"width": 4}, 3, 32),
    ("alexnet", {}, 1, 28),
    ("alexnet", {"norm": "instance"}, 3, 32),
    ("vgg11", {"norm": "batch"}, 3, 32),
    ("resnet18", {}, 1, 12),
    ("resnet18", {"norm": "batch"}, 3, 16),
    ("lenet", {"activation": "tanh"}, 1, 28),
    ("mlp", {"width": 16, "depth": 3}, 3, 8),
]


def _closing(block: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """(trailing pool or None, closing activation) of a block, read off its modules."""
    if isinstance(block, nn.Sequential) and isinstance(block[-1], _POOLS):
        pool, rest = block[-1], list(block)[:-1]
    else:
        pool, rest = None, list(block) if isinstance(block, nn.Sequential) else [block]
    last = rest[-1]
    if isinstance(last, _ACTS):
        return pool, last
    return pool, nn.ReLU()  # a ResNet stage: its last BasicBlock closes with a ReLU


@pytest.mark.parametrize(("name", "params", "channels", "size"), CASES)
def test_taps_are_consistent_for_every_backbone(name, params, channels, size):
    torch.manual_seed(0)
    net = _build(name, channels, size, **params).eval()
    x = torch.randn(3, channels, size, size)
    out = net.features(x)
    # the default is unchanged: bit-identical to the explicit "output" tap
    for a, b in zip(out, net.features(x, tap="output"), strict=True):
        assert torch.equal(a, b)
    pre_pool = net.features(x, tap="pre_pool")
    pre_act = net.features(x, tap="pre_activation")
    assert len(pre_pool) == len(pre_act) == len(out)
    for k, block in enumerate(net.blocks):
        pool, act = _closing(block)
        if pool is None:
            torch.testing.assert_close(pre_pool[k], out[k], rtol=0, atol=0)
        else:
            torch.testing.assert_close(pool(pre_pool[k]), out[k], rtol=0, atol=0)
        torch.testing.assert_close(act(pre_act[k]), pre_pool[k], rtol=0, atol=0)
        # the activation does something: the taps are different tensors
        assert not torch.equal(pre_act[k], pre_pool[k])


def test_convnet_pre_activation_is_conv_then_norm():
    torch.manual_seed(1)
    net = _build("convnet", 1, 28, width=6, depth=2)
    x = torch.randn(2, 1, 28, 28)
    pre = net.features(x, tap="pre_activation")
    conv, norm = net.blocks[0][0], net.blocks[0][1]
    torch.testing.assert_close(pre[0], norm(conv(x)))
    block1_in = net.features(x)[0]
    torch.testing.assert_close(pre[1], net.blocks[1][1](net.blocks[1][0](block1_in)))
    assert pre[0].min() < 0  # before the ReLU
    # pre_pool of a 3x3/pad-3 first conv on 28x28 is 32x32, pooled to 16x16
    pre_pool = net.features(x, tap="pre_pool")[0]
    assert pre_pool.shape == (2, 6, 32, 32)
    torch.testing.assert_close(pre_pool, pre[0].clamp(min=0))  # the default ReLU
    torch.testing.assert_close(F.avg_pool2d(pre_pool, 2), net.features(x)[0])


def test_taps_leave_parameters_and_gradients_alone():
    torch.manual_seed(2)
    net = _build("convnet", 1, 28, width=4, depth=3)
    keys = list(net.state_dict())
    assert keys[:4] == ["blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.weight",
                        "blocks.0.1.bias"]
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    net.features(x, tap="pre_activation")[1].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert list(net.state_dict()) == keys


def test_example_plugin_inherits_taps():
    torch.manual_seed(3)
    gap = ConvNetGAP(ConvNetGAP.Params(width=4, depth=2), channels=1, num_classes=3,
                     image_size=(28, 28))
    x = torch.randn(2, 1, 28, 28)
    pre = gap.features(x, tap="pre_pool")
    torch.testing.assert_close(F.avg_pool2d(pre[-1], 2), gap.features(x)[-1])


class _Legacy(Backbone):
    """A third-party backbone written before taps: ``features(x)`` only."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 3)])
        self.classifier = nn.Linear(3, 2)

    def features(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return [self.blocks[0](x.flatten(1))]


def test_a_backbone_without_taps_works_for_the_default_only():
    net = _Legacy()
    x = torch.randn(2, 4)
    torch.testing.assert_close(tapped_features(net, x)[0], net.blocks[0](x))
    with pytest.raises(ValueError, match="_Legacy does not support feature taps"):
        tapped_features(net, x, "pre_pool")
    conv = _build("convnet", 1, 8, width=4, depth=1)
    y = torch.randn(1, 1, 8, 8)
    assert torch.equal(tapped_features(conv, y, "pre_pool")[0], conv.features(y, "pre_pool")[0])


def test_unknown_tap_and_untappable_block_are_errors():
    net = _build("convnet", 1, 8, width=4, depth=1)
    with pytest.raises(ValueError, match="known taps: output, pre_pool, pre_activation"):
        net.features(torch.randn(1, 1, 8, 8), tap="post_norm")  # type: ignore[arg-type]
    assert TAPS == ("output", "pre_pool", "pre_activation")

    class NoAct(Backbone):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])
            self.classifier = nn.Linear(4, 2)

    with pytest.raises(ValueError, match="NoAct block 1 is not"):
        NoAct().features(torch.randn(1, 4), tap="pre_activation")
