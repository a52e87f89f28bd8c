"""The recipe's ``performance`` options: how a run computes, never what."""

import pytest
import torch
from helpers import TINY, distilled, merged

from mim4dd_kit.backbones.convnet import ConvNet
from mim4dd_kit.config import performance
from mim4dd_kit.config.recipe import validate_recipe
from mim4dd_kit.core.errors import RecipeError


def test_performance_keys_are_validated():
    with pytest.raises(RecipeError, match=r"performance\.chanels_last"):
        validate_recipe(merged(TINY, {"performance": {"chanels_last": False}}))
    with pytest.raises(RecipeError, match=r"performance\.chunk_mb"):
        validate_recipe(merged(TINY, {"performance": {"chunk_mb": -1}}))


def test_speed_options_leave_the_fingerprint_alone():
    a = validate_recipe(TINY)
    b = validate_recipe(merged(TINY, {"performance": {"channels_last": False, "bf16": True,
                                                      "chunk_mb": 0}}))
    assert a.fingerprint() == b.fingerprint()
    c = validate_recipe(merged(TINY, {"seed": 1}))
    assert a.fingerprint() != c.fingerprint()


def _make():
    return ConvNet(ConvNet.Params(width=8, depth=2), channels=1, num_classes=3,
                   image_size=(8, 8))


def test_backbone_factory_lays_networks_out_as_asked():
    cuda = torch.device("cuda")  # the factory only lays out; no tensor moves to the device
    nhwc = performance.backbone_factory(_make, performance.PerformanceSettings(), cuda)()
    conv = nhwc.blocks[1][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    plain = performance.PerformanceSettings(channels_last=False)
    assert performance.backbone_factory(_make, plain, cuda) is _make
    # on a CPU networks stay NCHW (accurate GroupNorm backward)
    default = performance.PerformanceSettings()
    assert performance.backbone_factory(_make, default, torch.device("cpu")) is _make
    torch.manual_seed(0)
    a = _make()
    torch.manual_seed(0)
    b = performance.backbone_factory(_make, default, cuda)()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)  # same values


def test_layout_and_chunking_do_not_change_the_result(tmp_path):
    base = merged(TINY, {"synthetic": {"iterations": 3}})
    ref = distilled(validate_recipe(base), tmp_path / "ref")
    for i, perf in enumerate([{"chunk_mb": 0},  # whole batches, NCHW
                              {"chunk_mb": 0.01}]):  # chunks of a few images, NHWC twin
        got = distilled(validate_recipe(merged(base, {"performance": perf})),
                        tmp_path / f"v{i}")
        torch.testing.assert_close(got.images, ref.images, rtol=0, atol=1e-5)


def test_bf16_autocast_runs_and_stays_close(tmp_path):
    base = merged(TINY, {"synthetic": {"iterations": 2}})
    ref = distilled(validate_recipe(base), tmp_path / "ref")
    low = distilled(validate_recipe(merged(base, {"performance": {"bf16": True}})),
                    tmp_path / "bf16")
    assert low.images.dtype == torch.float32
    assert torch.isfinite(low.images).all()
    # bfloat16 rounds activations to 8 mantissa bits: close, not equal
    assert (low.images - ref.images).abs().max() < 0.05


def test_compile_option_compiles_every_network_lazily():
    settings = performance.PerformanceSettings(compile=True, channels_last=False)
    make = performance.backbone_factory(_make, settings, torch.device("cpu"))
    net = make()
    # nn.Module.compile() installs the compiled call; compilation itself waits for a call
    assert net._compiled_call_impl is not None
    assert _make()._compiled_call_impl is None
