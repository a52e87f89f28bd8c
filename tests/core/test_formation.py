"""Multi-formation: decoding, the file format's record of it, evaluation of decoded sets."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mim4dd_kit.analysis.compare import compare
from mim4dd_kit.cli import app
from mim4dd_kit.core.errors import SyntheticSetError
from mim4dd_kit.io import formation
from mim4dd_kit.io.synthetic import load_synthetic, save_synthetic
from mim4dd_kit.run.evaluate import evaluate


def _crop_loop(img: torch.Tensor, factor: int, pad: float) -> torch.Tensor:
    """A plain transcription of uniform multi-formation: pad, cut tiles, resize each."""
    h = img.shape[-1]
    rem = h % factor
    if rem:
        img = F.pad(img, (0, factor - rem, 0, factor - rem), value=pad)
    s = -(-h // factor)
    out = []
    for n in range(img.shape[0]):  # per image: tiles in row-major order
        for i in range(factor):
            for j in range(factor):
                tile = img[n:n + 1, :, i * s:(i + 1) * s, j * s:(j + 1) * s]
                out.append(F.interpolate(tile, size=(h, h), mode="bilinear",
                                         align_corners=False))
    return torch.cat(out)


def test_decode_values_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    images, labels = formation.decode(x, torch.tensor([7]), 2)
    assert images.shape == (4, 1, 4, 4) and labels.tolist() == [7, 7, 7, 7]
    # tile (0, 0) is [[0, 1], [4, 5]]: bilinear upsampling to 4x4 (half-pixel centres)
    assert images[0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert images[0, 0, :, 0].tolist() == [0.0, 1.0, 3.0, 4.0]
    # tiles in row-major order: (0, 1) starts at 2, (1, 0) at 8, (1, 1) at 10
    assert images[:, 0, 0, 0].tolist() == [0.0, 2.0, 8.0, 10.0]


def test_factor_one_is_the_identity_and_labels_follow_their_image():
    x, y = torch.randn(3, 2, 6, 6), torch.tensor([0, 1, 1])
    same_x, same_y = formation.decode(x, y, 1)
    assert same_x is x and same_y is y
    images, labels = formation.decode(x, y, 3)
    assert images.shape == (27, 2, 6, 6)
    torch.testing.assert_close(images, _crop_loop(x, 3, 0.0))  # 6 = 3 tiles of 2, no padding
    assert labels.tolist() == [0] * 9 + [1] * 18
    with pytest.raises(ValueError, match="factor"):
        formation.decode(x, y, 0)


@pytest.mark.parametrize(("size", "factor"), [(8, 2), (7, 2), (9, 4)])
def test_decode_equals_the_tile_loop_and_is_differentiable(size, factor):
    torch.manual_seed(0)
    x = torch.randn(3, 2, size, size, requires_grad=True)
    images, _ = formation.decode(x, torch.zeros(3, dtype=torch.long), factor, pad=0.5)
    torch.testing.assert_close(images, _crop_loop(x.detach(), factor, 0.5))
    images.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_decode_commutes_with_normalisation_given_the_pad_value():
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 7, 7)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    y = torch.tensor([0, 1])
    in_pixels, _ = formation.decode(pixels, y, 2, pad=0.5)
    normalised, _ = formation.decode((pixels - m) / s, y, 2, pad=formation.pad_value(mean, std))
    torch.testing.assert_close(normalised * s + m, in_pixels, rtol=1e-5, atol=1e-5)


def test_provenance_round_trip_and_old_files(tmp_path):
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    path = save_synthetic(tmp_path / "f.safetensors", x, y, None,
                          {"formation": formation.metadata_entry(2)})
    s = load_synthetic(path)
    assert s.metadata["formation"] == {"factor": 2} and s.formation == 2
    images, labels = s.decoded()
    assert images.shape == (16, 1, 8, 8) and labels.bincount().tolist() == [8, 8]
    torch.testing.assert_close(images, _crop_loop(x, 2, 0.0))  # the saved tensors, decoded
    old = load_synthetic(save_synthetic(tmp_path / "old.safetensors", x, y))
    assert old.formation == 1 and old.decoded()[0] is old.images
    bad = save_synthetic(tmp_path / "bad.safetensors", x, y, None, {"formation": {"factor": 0}})
    with pytest.raises(SyntheticSetError, match="mdk.formation"):
        load_synthetic(bad)


def _digits_set(tmp_path, factor: int, images, labels, name):
    meta = {"recipe": {"dataset": {"name": "digits"}, "seed": 0,
                       "backbone": {"name": "mlp"}, "augmentation": None,
                       "evaluators": [{"name": "train_from_scratch", "models": 1,
                                       "epochs": 3}]}}
    if factor > 1:
        meta["formation"] = formation.metadata_entry(factor)
    return save_synthetic(tmp_path / name, images, labels, None, meta)


def test_a_stored_factor_2_set_evaluates_as_its_decoded_images(tmp_path):
    torch.manual_seed(0)
    stored = torch.randn(10, 1, 8, 8)
    labels = torch.arange(10)
    decoded, decoded_labels = formation.decode(stored, labels, 2)
    f2 = _digits_set(tmp_path, 2, stored, labels, "f2.safetensors")
    plain = _digits_set(tmp_path, 1, decoded, decoded_labels, "plain.safetensors")
    raw = _digits_set(tmp_path, 1, stored, labels, "raw.safetensors")
    a = evaluate(f2, device="cpu")
    b = evaluate(plain, device="cpu")
    c = evaluate(raw, device="cpu")
    acc = [r["evaluations"]["train_from_scratch"]["accuracies"] for r in (a, b, c)]
    assert a["formation"] == 2 and b["formation"] == 1
    assert acc[0] == acc[1]  # the same networks trained on the same decoded images
    assert acc[0] != acc[2]  # not on the stored ones
    rows = compare([f2, plain])
    assert rows[0]["decoded_images"] == 40 and rows[0]["images"] == 10
    assert rows[1]["decoded_images"] == 40 and rows[1]["formation"] == 1


def test_show_states_stored_and_decoded_counts(tmp_path):
    x, y = torch.randn(6, 1, 8, 8), torch.arange(3).repeat_interleave(2)
    path = save_synthetic(tmp_path / "s.safetensors", x, y, None,
                          {"formation": formation.metadata_entry(2)})
    res = CliRunner().invoke(app, ["show", str(path), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert (shown["stored_images"], shown["decoded_images"], shown["decoded_ipc"]) == (6, 24, 8)
    assert shown["formation"] == {"factor": 2}
