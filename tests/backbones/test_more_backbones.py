"""Cross-architecture backbones: ConvNetD4, AlexNet, VGG11 and ResNet18 (DC code base)."""

import pytest
import torch
from torch import nn

from mim4dd_kit.backbones.alexnet import AlexNet
from mim4dd_kit.backbones.convnet import ConvNet, ConvNetD4
from mim4dd_kit.backbones.resnet import ResNet18
from mim4dd_kit.backbones.vgg import VGG11
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import PluginError


def _build(name: str, channels: int, size: int, classes: int = 10, **params):
    return default_registry().build("backbones", {"name": name, **params}, channels=channels,
                                    num_classes=classes, image_size=(size, size))


# (name, params, channels, size, expected per-block shapes)
CASES = [
    ("convnet_d4", {"width": 8}, 3, 64,
     [(8, 32, 32), (8, 16, 16), (8, 8, 8), (8, 4, 4)]),
    ("convnet_d4", {"width": 8}, 1, 28, [(8, 16, 16), (8, 8, 8), (8, 4, 4), (8, 2, 2)]),
    ("alexnet", {}, 1, 28, [(128, 16, 16), (192, 8, 8), (192, 4, 4)]),
    ("alexnet", {"norm": "batch"}, 3, 32, [(128, 16, 16), (192, 8, 8), (192, 4, 4)]),
    ("alexnet", {"norm": "instance"}, 3, 32, [(128, 16, 16), (192, 8, 8), (192, 4, 4)]),
    ("vgg11", {}, 1, 28, [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]),
    ("vgg11", {"norm": "batch"}, 3, 32,
     [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]),
    ("resnet18", {}, 1, 28, [(64, 28, 28), (64, 28, 28), (128, 14, 14), (256, 7, 7),
                             (512, 4, 4)]),
    ("resnet18", {"norm": "batch"}, 3, 32,
     [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
]


@pytest.mark.parametrize(("name", "params", "channels", "size", "shapes"), CASES)
def test_shapes_through_registry(name, params, channels, size, shapes):
    torch.manual_seed(0)
    net = _build(name, channels, size, classes=7, **params)
    assert net.feature_shapes() == shapes  # by arithmetic, before any forward pass
    x = torch.randn(2, channels, size, size)
    feats = net.features(x)
    assert [tuple(f.shape[1:]) for f in feats] == shapes
    logits = net.classify(feats[-1])
    assert logits.shape == (2, 7)
    torch.testing.assert_close(net(x), logits)
    # the head by hand: one fc layer on the flattened last block (ResNet: on its channel
    # means, the global average pool)
    last = feats[-1].mean(dim=(2, 3)) if name == "resnet18" else feats[-1].reshape(2, -1)
    fc = net.classifier
    torch.testing.assert_close(logits, last @ fc.weight.T + fc.bias)


def test_registered_classes_and_defaults():
    registry = default_registry()
    assert registry.load("backbones", "convnet_d4") is ConvNetD4
    assert registry.load("backbones", "alexnet") is AlexNet
    assert registry.load("backbones", "vgg11") is VGG11
    assert registry.load("backbones", "resnet18") is ResNet18
    assert ConvNetD4.Params().depth == 4 and ConvNet.Params().depth == 3
    assert issubclass(ConvNetD4, ConvNet)
    assert AlexNet.Params().norm == "none"
    assert VGG11.Params().norm == ResNet18.Params().norm == "instance"
    for cls in (AlexNet, VGG11, ResNet18):
        with pytest.raises(ValueError):
            cls.Params(norm="layer")
        with pytest.raises(ValueError):
            cls.Params(width=8)


def test_reference_layout_details():
    alex = _build("alexnet", 1, 28)
    assert alex.blocks[0][0].padding == (4, 4) and alex.classifier.in_features == 192 * 16
    assert _build("alexnet", 3, 32).blocks[0][0].padding == (2, 2)
    vgg = _build("vgg11", 1, 28)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert convs[0].padding == (3, 3) and {c.padding for c in convs[1:]} == {(1, 1)}
    assert vgg.classifier.in_features == 512
    norm = vgg.blocks[0][1]
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 64 and norm.affine
    res = _build("resnet18", 3, 32)
    assert res.blocks[0][0].stride == (1, 1) and res.blocks[0][0].kernel_size == (3, 3)
    assert res.classifier.in_features == 512
    res_bn = _build("resnet18", 3, 32, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in res_bn.modules()) == 20
    # the standard CIFAR ResNet-18 parameter count (BatchNorm, 10 classes)
    assert sum(p.numel() for p in res_bn.parameters()) == 11_173_962


@pytest.mark.parametrize(
    ("name", "params", "channels", "size"),
    [("alexnet", {"norm": "instance"}, 1, 28), ("alexnet", {}, 3, 32), ("vgg11", {}, 3, 32),
     ("resnet18", {}, 1, 28), ("convnet_d4", {"width": 8}, 3, 64)],
)
def test_instance_norm_is_per_sample(name, params, channels, size):
    torch.manual_seed(0)
    net = _build(name, channels, size, **params)
    x = torch.randn(2, channels, size, size)
    y = x.clone()
    y[1] = 5 * torch.randn(channels, size, size) + 2
    for mode in (True, False):  # identical in train and eval mode
        net.train(mode)
        with torch.no_grad():
            out = net(x)
            torch.testing.assert_close(out[0], net(y)[0])  # the other sample is irrelevant
            torch.testing.assert_close(net(x[:1])[0], out[0], atol=1e-5, rtol=1e-4)


def test_too_small_images_are_rejected():
    with pytest.raises(PluginError, match="vgg11"):
        _build("vgg11", 3, 16)
    with pytest.raises(PluginError, match="alexnet"):
        _build("alexnet", 3, 4)
    with pytest.raises(PluginError, match="resnet18"):
        _build("resnet18", 3, 8)  # instance norm on a 1x1 map


def test_gradient_reaches_input():
    net = _build("resnet18", 1, 28)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
