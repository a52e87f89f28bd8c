"""Backbones: the DD-standard ConvNet layout and the MLP."""

import pytest
import torch

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.backbones.mlp import MLP
from mim4dd_kit.critics.identity import IdentityCritic
from mim4dd_kit.critics.linear import LinearCritic
from mim4dd_kit.critics.mlp import MLPCritic


def _convnet(channels=1, size=28, **params):
    return ConvNet(ConvNet.Params(**params), channels=channels, num_classes=10,
                   image_size=(size, size))


def test_convnet_fashion_mnist_parameter_count():
    # conv1 1*128*9+128, 3 GroupNorms 2*128 each, conv2/conv3 128*128*9+128,
    # classifier 2048*10+10: the reference ConvNet's ~318k parameters
    expected = (1 * 128 * 9 + 128) + 3 * 256 + 2 * (128 * 128 * 9 + 128) + (2048 * 10 + 10)
    net = _convnet()
    assert sum(p.numel() for p in net.parameters()) == expected == 317706
    assert net.classifier.in_features == 2048


def test_convnet_block_shapes_grey_padding_and_colour():
    net = _convnet(width=8)
    feats = net.features(torch.randn(2, 1, 28, 28))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    assert net.feature_shapes() == [tuple(f.shape[1:]) for f in feats]
    net = _convnet(channels=3, size=32, width=8)
    feats = net.features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 16), (8, 8), (4, 4)]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_instance_norm_is_per_sample():
    torch.manual_seed(0)
    net = _convnet(width=8).eval()
    x = torch.randn(4, 1, 28, 28)
    y = x.clone()
    y[1:] = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(net(x)[0], net(y)[0])
    assert isinstance(net.blocks[0][1], torch.nn.GroupNorm) and net.blocks[0][1].num_groups == 8


def test_convnet_variants_and_depth_error():
    assert isinstance(_convnet(width=4, norm="batch").blocks[0][1], torch.nn.BatchNorm2d)
    assert isinstance(_convnet(width=4, pooling="max").blocks[0][3], torch.nn.MaxPool2d)
    with pytest.raises(ValueError, match="shrinks"):
        _convnet(size=8, depth=5, width=4)


def test_mlp_shapes():
    net = MLP(MLP.Params(width=16), channels=1, num_classes=3, image_size=(8, 8))
    feats = net.features(torch.randn(5, 1, 8, 8))
    assert [tuple(f.shape) for f in feats] == [(5, 16), (5, 16)]
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 3)


def test_critics():
    x = torch.randn(4, 10, requires_grad=True)
    ident = IdentityCritic(IdentityCritic.Params(), in_features=10)
    assert ident(x) is x and ident.out_dim == 10
    for critic in (LinearCritic(LinearCritic.Params(out_dim=6), in_features=10),
                   MLPCritic(MLPCritic.Params(hidden=7, out_dim=6), in_features=10)):
        out = critic(x)
        assert out.shape == (4, 6) and critic.out_dim == 6
        out.sum().backward()
        assert all(p.grad is not None for p in critic.parameters())
    with pytest.raises(ValueError):
        LinearCritic.Params(out_dim=0)
    with pytest.raises(ValueError):
        LinearCritic.Params(out_dims=3)
