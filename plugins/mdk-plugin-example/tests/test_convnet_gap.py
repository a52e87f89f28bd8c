"""The example plugin's convnet_gap: core ConvNet blocks, pooled head, entry-point discovery."""

import pytest
import torch
from mdk_plugin_example.convnet_gap import ConvNetGAP

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.config.registry import Registry


def _net(cls, channels: int, size: int, **params):
    return cls(cls.Params(**params), channels=channels, num_classes=10, image_size=(size, size))


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 20)])
def test_blocks_match_the_core_convnet_and_head_pools(channels, size):
    torch.manual_seed(0)
    gap = _net(ConvNetGAP, channels, size, width=8, depth=2)
    torch.manual_seed(0)
    core = _net(ConvNet, channels, size, width=8, depth=2)
    x = torch.randn(2, channels, size, size)
    feats = gap.features(x)
    # same blocks, same initialisation order: identical features
    for a, b in zip(feats, core.features(x), strict=True):
        torch.testing.assert_close(a, b)
    last = feats[-1]
    expected = last.mean(dim=(2, 3)) @ gap.classifier.weight.T + gap.classifier.bias
    torch.testing.assert_close(gap(x), expected)
    assert gap(x).shape == (2, 10)
    assert gap.classifier.in_features == 8  # width, whatever the image size


def test_fewer_parameters_than_the_flatten_head():
    gap = _net(ConvNetGAP, 1, 28, width=16, depth=3)
    core = _net(ConvNet, 1, 28, width=16, depth=3)
    n_gap = sum(p.numel() for p in gap.parameters())
    n_core = sum(p.numel() for p in core.parameters())
    # flatten head: 16*4*4*10 + 10; pooled head: 16*10 + 10
    assert n_core - n_gap == (16 * 4 * 4 * 10 + 10) - (16 * 10 + 10)


def test_params_are_the_convnet_params():
    with pytest.raises(ValueError):
        ConvNetGAP.Params(depht=2)  # unknown key
    with pytest.raises(ValueError):
        ConvNetGAP.Params(norm="group", width=6)  # core validator inherited


def test_discovered_through_entry_point():
    registry = Registry()  # fresh: this environment's installed entry points
    assert registry.load("backbones", "convnet_gap") is ConvNetGAP
    assert registry.load("backbones", "mdk_plugin_example:convnet_gap") is ConvNetGAP
    net = registry.build("backbones", {"name": "convnet_gap", "width": 4, "depth": 1},
                         channels=1, num_classes=4, image_size=(8, 8))
    assert isinstance(net, ConvNetGAP) and net(torch.randn(1, 1, 8, 8)).shape == (1, 4)
