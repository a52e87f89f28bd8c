import torch

from mdk_plugin_example.lenet import LeNet
from mim4dd_kit.registry import default_registry


def test_shapes_grey_and_colour():
    for c, size in ((1, 28), (3, 32)):
        net = LeNet(LeNet.Params(), channels=c, num_classes=10, image_size=(size, size))
        x = torch.randn(2, c, size, size)
        feats = net.features(x)
        assert [tuple(f.shape) for f in feats][1:] == [(2, 400), (2, 120), (2, 84)]
        assert net(x).shape == (2, 10)


def test_discovered_through_entry_point():
    cls = default_registry().load("backbones", "lenet")
    assert cls is LeNet
    assert default_registry().provenance("backbones", "lenet")["package"] == \
        "mdk_plugin_example"


def test_gradients_flow():
    net = LeNet(LeNet.Params(), channels=1, num_classes=3, image_size=(28, 28))
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0
