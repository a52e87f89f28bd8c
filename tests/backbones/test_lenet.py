"""The built-in LeNet (DC code base): shapes, parameter count, blocks, registration."""

import pytest
import torch
import torch.nn.functional as F

from mim4dd_kit.backbones.lenet import LeNet
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import PluginError


def _lenet(channels: int, size: int, classes: int = 10, **params) -> LeNet:
    return default_registry().build("backbones", {"name": "lenet", **params}, channels=channels,
                                    num_classes=classes, image_size=(size, size))


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_output_and_block_shapes(channels, size):
    torch.manual_seed(0)
    net = _lenet(channels, size)
    assert isinstance(net, LeNet)
    x = torch.randn(2, channels, size, size)
    feats = net.features(x)
    # one tensor per block; padding 2 on grey input makes 1x28x28 follow 3x32x32's sizes
    assert [tuple(f.shape) for f in feats] == [(2, 6, 14, 14), (2, 16, 5, 5), (2, 120), (2, 84)]
    assert net.feature_shapes() == [tuple(f.shape[1:]) for f in feats]
    assert net(x).shape == (2, 10)
    torch.testing.assert_close(net(x), net.classify(feats[-1]))
    assert net.embed(x).shape == (2, 84)
    # LeNet-5 written out with the network's weights: conv-relu-pool twice, three fc layers
    conv1, conv2 = net.blocks[0][0], net.blocks[1][0]
    fc1, fc2, head = net.blocks[2][1], net.blocks[3][0], net.classifier
    h = F.max_pool2d(F.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=2 if channels == 1
                                     else 0)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, conv2.weight, conv2.bias)), 2)
    h = F.relu(F.linear(F.relu(F.linear(h.flatten(1), fc1.weight, fc1.bias)), fc2.weight,
                        fc2.bias))
    torch.testing.assert_close(net.embed(x), h)
    torch.testing.assert_close(net(x), F.linear(h, head.weight, head.bias))


@pytest.mark.parametrize(("channels", "classes"), [(1, 10), (3, 10), (3, 100)])
def test_parameter_count_by_hand(channels, classes):
    net = _lenet(channels, 28 if channels == 1 else 32, classes)
    expected = (
        (channels * 6 * 5 * 5 + 6)  # conv1
        + (6 * 16 * 5 * 5 + 16)  # conv2
        + (16 * 5 * 5 * 120 + 120)  # fc1
        + (120 * 84 + 84)  # fc2
        + (84 * classes + classes)  # classifier
    )
    assert sum(p.numel() for p in net.parameters()) == expected
    if (channels, classes) == (1, 10):
        assert expected == 61_706  # the classic LeNet-5 count


def test_reference_activation_is_relu_and_not_in_place():
    net = _lenet(1, 28)
    acts = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(acts) == 4 and not any(a.inplace for a in acts)
    torch.manual_seed(1)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    net(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_bad_params_and_contexts_are_rejected():
    with pytest.raises(ValueError):
        LeNet.Params(activation="gelu")
    with pytest.raises(ValueError):
        LeNet.Params(width=3)  # unknown key
    with pytest.raises(ValueError, match="larger images than 8x8"):
        LeNet(LeNet.Params(), channels=1, num_classes=10, image_size=(8, 8))  # digits
    with pytest.raises(PluginError, match="larger images"):
        _lenet(3, 15)  # through the registry: the build error names the component
    with pytest.raises(ValueError, match="LeNet needs positive"):
        LeNet(LeNet.Params(), channels=0, num_classes=10, image_size=(28, 28))


def test_registered_by_the_toolkit():
    info = [i for i in default_registry().describe("backbones") if i.name == "lenet"]
    assert len(info) == 1 and info[0].package == "mim4dd_kit" and info[0].error is None
