"""The example plugin's LeNet: shapes, blocks, gradients and discovery by entry point."""

import pytest
import torch
from mdk_plugin_example.lenet import LeNet

from mim4dd_kit.registry import Registry


def _lenet(channels: int, size: int, **params) -> LeNet:
    return LeNet(LeNet.Params(**params), channels=channels, num_classes=10,
                 image_size=(size, size))


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_shapes_and_blocks(channels, size):
    net = _lenet(channels, size)
    x = torch.randn(2, channels, size, size)
    feats = net.features(x)
    assert len(feats) == 4  # two conv stages, two hidden fc layers
    # padding 2 on grey input: 1x28x28 follows the same sizes as 3x32x32
    assert [tuple(f.shape) for f in feats] == [(2, 6, 14, 14), (2, 16, 5, 5), (2, 120), (2, 84)]
    assert net.feature_shapes() == [tuple(f.shape[1:]) for f in feats]
    assert net(x).shape == (2, 10)
    assert net.embed(x).shape == (2, 84)


def test_gradients_flow_to_input_and_every_parameter():
    torch.manual_seed(0)
    net = _lenet(1, 28, activation="tanh")
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    net(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_params_and_small_images_rejected():
    with pytest.raises(ValueError):
        LeNet.Params(activation="gelu")
    with pytest.raises(ValueError):
        LeNet.Params(width=3)  # unknown key
    with pytest.raises(ValueError, match="larger images"):
        _lenet(3, 8)


def test_discovered_through_entry_point():
    registry = Registry()  # fresh: this environment's installed entry points
    assert registry.load("backbones", "lenet") is LeNet
    assert registry.load("backbones", "mdk_plugin_example:lenet") is LeNet
    net = registry.build("backbones", {"name": "lenet", "activation": "sigmoid"},
                         channels=1, num_classes=4, image_size=(28, 28))
    assert isinstance(net, LeNet) and net(torch.randn(1, 1, 28, 28)).shape == (1, 4)
