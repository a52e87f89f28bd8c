import pytest
import torch

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.training import chunked
from mim4dd_kit.training.stats import class_means


def _net(norm="instance", width=8):
    torch.manual_seed(0)
    return ConvNet(ConvNet.Params(width=width, depth=2, norm=norm), channels=1,
                   num_classes=3, image_size=(8, 8))


def test_chunk_size_follows_the_largest_activation():
    net = _net(width=8)  # grey 8x8 pads to 12x12: block 1 is 8 x 12 x 12 before pooling
    x = torch.zeros(1000, 1, 8, 8)
    per_image = 8 * 12 * 12 * 4  # bytes
    assert chunked.chunk_size(net, x, budget=per_image * 10) == 10
    assert chunked.chunk_size(net, x, budget=1) == 1
    assert chunked.chunk_size(net, x, budget=2**40) == 1000


def test_batch_norm_in_training_is_never_chunked():
    net = _net(norm="batch").train()
    x = torch.randn(64, 1, 8, 8)
    assert chunked.couples_samples(net)
    assert chunked.chunk_size(net, x, budget=1) == 64
    net.eval()  # running statistics: samples are independent again
    assert not chunked.couples_samples(net)
    assert chunked.chunk_size(net, x, budget=1) == 1


@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_chunked_features_equal_the_whole_batch(chunk):
    net = _net()
    x = torch.randn(64, 1, 8, 8)
    whole = net.features(x)
    parts = chunked.features(net, x, chunk=chunk)
    assert [p.shape for p in parts] == [w.shape for w in whole]
    for p, w in zip(parts, whole, strict=True):
        torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)
        assert not p.requires_grad


def test_class_sums_equal_class_means_times_counts():
    net = _net()
    x = torch.randn(30, 1, 8, 8)
    y = torch.tensor([0, 1, 2] * 10)
    sums = chunked.class_sums(net, x, y, 3, chunk=4)
    means = class_means(net.features(x)[-1].flatten(1), y, 3)
    torch.testing.assert_close(sums / 10, means, rtol=1e-5, atol=1e-6)


def test_logits_equal_forward():
    net = _net().eval()
    x = torch.randn(25, 1, 8, 8)
    torch.testing.assert_close(chunked.logits(net, x, chunk=6), net(x), rtol=1e-5, atol=1e-6)


def test_chunked_passes_run_a_channels_last_twin_and_leave_the_network_alone():
    net = _net()
    x = torch.randn(40, 1, 8, 8)
    seen = []
    hook = net.blocks[0][0].register_forward_hook(lambda m, i, o: seen.append(m))
    chunked.features(net, x, chunk=8)
    hook.remove()
    # (deepcopy carries the hook over) the twin ran, not the caller's network
    assert seen and all(m is not net.blocks[0][0] for m in seen)
    assert net.blocks[0][0].weight.is_contiguous()  # still NCHW
    whole = chunked.features(net, x, chunk=len(x))  # one chunk: the network itself
    torch.testing.assert_close(chunked.features(net, x, chunk=8)[0], whole[0],
                               rtol=1e-5, atol=1e-6)
