"""Built-in backbones: the DD-standard ConvNet and the DC code base's MLP."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.backbones.mlp import MLP
from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import PluginError


def _convnet(channels: int = 1, size: int | tuple[int, int] = 28, classes: int = 10,
             **params) -> ConvNet:
    hw = (size, size) if isinstance(size, int) else size
    return ConvNet(ConvNet.Params(**params), channels=channels, num_classes=classes,
                   image_size=hw)


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_convnet_fashion_mnist_parameter_count_by_hand():
    # 1x28x28, width 128, depth 3, instance norm (GroupNorm with weight + bias per channel)
    conv1 = 1 * 128 * 3 * 3 + 128  # 1,280
    conv23 = 128 * 128 * 3 * 3 + 128  # 147,584 each
    norms = 3 * (128 + 128)  # 768
    fc = (128 * 4 * 4) * 10 + 10  # 20,490: 2048 features thanks to padding 3
    net = _convnet()
    assert net.classifier.in_features == 2048
    assert _count(net) == conv1 + 2 * conv23 + norms + fc == 317_706


def test_convnet_grey_first_conv_pads_by_three():
    net = _convnet(width=8)
    first, second = net.blocks[0][0], net.blocks[1][0]
    assert first.padding == (3, 3) and second.padding == (1, 1)
    x = torch.randn(2, 1, 28, 28)
    assert first(x).shape == (2, 8, 32, 32)  # 28 -> 32 before the first pool
    # the same convolution on an input zero-padded by hand
    padded = F.pad(x, (3, 3, 3, 3))
    torch.testing.assert_close(first(x), F.conv2d(padded, first.weight, first.bias))
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    assert net(x).shape == (2, 10)
    w, b = net.classifier.weight, net.classifier.bias
    torch.testing.assert_close(net(x), feats[-1].reshape(2, -1) @ w.T + b)


def test_convnet_colour_shapes():
    net = _convnet(channels=3, size=32, width=8)
    assert net.blocks[0][0].padding == (1, 1)
    x = torch.randn(2, 3, 32, 32)
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    assert net(x).shape == (2, 10)
    assert net.embed(x).shape == (2, 8 * 4 * 4)
    # the embedding is the last block flattened channel-major; the head is one fc layer on it
    torch.testing.assert_close(net.embed(x)[:, 17], feats[-1][:, 1, 0, 1])
    w, b = net.classifier.weight, net.classifier.bias
    torch.testing.assert_close(net(x), net.embed(x) @ w.T + b)


@pytest.mark.parametrize(
    ("channels", "size", "params"),
    [
        (1, 28, {}),
        (3, 32, {"depth": 4}),
        (3, (30, 20), {}),  # odd sizes floor at every pool: 15x10, 7x5, 3x2
        (1, 28, {"pooling": "max", "norm": "batch", "activation": "leakyrelu"}),
        (3, 16, {"pooling": "none", "depth": 2, "norm": "none", "activation": "sigmoid"}),
        (1, 12, {"norm": "layer", "depth": 2}),
        (3, 8, {"norm": "group", "depth": 3}),
    ],
)
def test_feature_shapes_match_forward(channels, size, params):
    net = _convnet(channels, size, width=8, **params)
    hw = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, channels, *hw)
    feats = net.features(x)
    assert len(feats) == params.get("depth", 3)
    assert net.feature_shapes() == [tuple(f.shape[1:]) for f in feats]
    # the classifier was sized by arithmetic; the forward pass must agree
    assert net.classifier.in_features == feats[-1][0].numel()
    assert net(x).shape == (2, 10)
    w, b = net.classifier.weight, net.classifier.bias
    torch.testing.assert_close(net(x), feats[-1].flatten(1) @ w.T + b)


def test_instance_norm_is_per_sample():
    torch.manual_seed(0)
    net = _convnet(width=8)  # train mode: instance norm has no batch statistics anyway
    x = torch.randn(4, 1, 28, 28)
    y = x.clone()
    y[1:] = 5 * torch.randn(3, 1, 28, 28) + 2
    torch.testing.assert_close(net.features(x)[-1][0], net.features(y)[-1][0])
    torch.testing.assert_close(net(x)[0], net(y)[0])
    norm = net.blocks[0][1]
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels == 8
    assert norm.affine
    # batch norm in train mode, by contrast, mixes samples
    bn = _convnet(width=8, norm="batch")
    assert not torch.allclose(bn(x)[0], bn(y)[0])


def test_norm_activation_pooling_variants():
    def layers(**params):
        return list(_convnet(width=8, depth=1, **params).blocks[0])

    assert isinstance(layers(norm="batch")[1], nn.BatchNorm2d)
    layer = layers(norm="layer")[1]
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    group = layers(norm="group")[1]
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 4
    conv, act, pool = layers(norm="none")
    assert isinstance(conv, nn.Conv2d) and isinstance(act, nn.ReLU)
    assert isinstance(pool, nn.AvgPool2d)
    leaky = layers(activation="leakyrelu")[2]
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.01
    assert isinstance(layers(activation="sigmoid")[2], nn.Sigmoid)
    assert isinstance(layers(pooling="max")[3], nn.MaxPool2d)
    assert len(layers(pooling="none")) == 3


def test_depth_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="too deep for 8x8 images"):
        _convnet(channels=3, size=8, width=4, depth=4)  # 8 -> 4 -> 2 -> 1 -> 0
    _convnet(channels=3, size=8, width=4, depth=3)  # 1x1 at the last block is fine
    _convnet(channels=3, size=8, width=4, depth=6, pooling="none")  # no pooling, no shrink
    # through the registry the same problem is a PluginError naming the backbone
    with pytest.raises(PluginError, match="convnet"):
        default_registry().build("backbones", {"name": "convnet", "depth": 9, "width": 4},
                                 channels=1, num_classes=10, image_size=(28, 28))


@pytest.mark.parametrize(
    "bad",
    [{"width": 0}, {"depth": 0}, {"norm": "weird"}, {"activation": "gelu"},
     {"pooling": "sum"}, {"widht": 8}, {"norm": "group", "width": 6}],
)
def test_convnet_params_reject_bad_values(bad):
    with pytest.raises(ValueError):
        ConvNet.Params(**bad)


def test_convnet_gradient_reaches_input():
    net = _convnet(width=8, depth=2)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mlp_reference_layout_and_shapes():
    net = MLP(MLP.Params(), channels=1, num_classes=10, image_size=(28, 28))
    # 784 -> 128 -> 128 -> 10, as in the DC code base
    assert _count(net) == (784 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)
    small = MLP(MLP.Params(width=16, depth=3), channels=3, num_classes=4, image_size=(8, 6))
    x = torch.randn(5, 3, 8, 6)
    feats = small.features(x)
    assert [tuple(f.shape) for f in feats] == [(5, 16)] * 3
    assert small.feature_shapes() == [tuple(f.shape[1:]) for f in feats]
    assert small(x).shape == (5, 4)
    assert (feats[0] >= 0).all()  # blocks end in a ReLU
    # the same map written out from the weights: flatten, 3 x (fc, ReLU), fc
    h = x.reshape(5, 3 * 8 * 6)
    for k, block in enumerate(small.blocks):
        h = (h @ block[0].weight.T + block[0].bias).clamp(min=0)
        torch.testing.assert_close(feats[k], h)
    torch.testing.assert_close(small(x), h @ small.classifier.weight.T + small.classifier.bias)
    with pytest.raises(ValueError):
        MLP.Params(depth=0)
    with pytest.raises(ValueError):
        MLP.Params(hidden=3)


def test_builtin_backbones_registered():
    registry = default_registry()
    assert registry.load("backbones", "convnet") is ConvNet
    assert registry.load("backbones", "mlp") is MLP
