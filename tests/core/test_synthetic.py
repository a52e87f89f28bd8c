"""The synthetic-set file: round trip, provenance, refusal of damaged or foreign files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mim4dd_kit.core.errors import SyntheticSetError
from mim4dd_kit.io.synthetic import (
    FORMAT,
    load_synthetic,
    save_synthetic,
    tensors_sha256,
    update_metadata,
)


def _set():
    torch.manual_seed(0)
    return torch.randn(6, 1, 8, 8), torch.arange(3).repeat_interleave(2)


def test_round_trip_keeps_tensors_and_nested_metadata(tmp_path):
    images, labels = _set()
    meta = {"recipe": {"name": "x", "synthetic": {"ipc": 2}}, "seed": 3, "final_losses": {}}
    path = save_synthetic(tmp_path / "s.safetensors", images, labels, 0.02, meta)
    s = load_synthetic(path)
    assert torch.equal(s.images, images) and torch.equal(s.labels, labels)
    assert s.lr == pytest.approx(0.02)
    assert s.metadata["recipe"] == meta["recipe"] and s.metadata["seed"] == 3
    assert s.metadata["format"] == FORMAT and s.made_by_mdk
    assert s.metadata["tensors_sha256"] == tensors_sha256(images, labels, 0.02)
    assert s.ipc() == 2 and s.num_classes == 3
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_update_metadata_merges_and_keeps_tensors(tmp_path):
    images, labels = _set()
    path = save_synthetic(tmp_path / "s.safetensors", images, labels, None, {"seed": 1})
    s = update_metadata(path, evaluations={"train_from_scratch": {"accuracy_mean": 50.0}})
    assert s.metadata["seed"] == 1
    assert s.metadata["evaluations"]["train_from_scratch"]["accuracy_mean"] == 50.0
    assert torch.equal(s.images, images)


def test_foreign_conforming_file_loads_without_metadata(tmp_path):
    images, labels = _set()
    save_file({"images": images, "labels": labels}, str(tmp_path / "f.safetensors"))
    s = load_synthetic(tmp_path / "f.safetensors")
    assert not s.made_by_mdk and s.metadata == {} and s.lr is None


def test_refuses_file_without_images(tmp_path):
    save_file({"weights": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(SyntheticSetError, match="lacks the tensor"):
        load_synthetic(tmp_path / "w.safetensors")


def test_refuses_truncated_file(tmp_path):
    images, labels = _set()
    path = save_synthetic(tmp_path / "s.safetensors", images, labels)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SyntheticSetError, match="not a readable safetensors"):
        load_synthetic(path)


def test_refuses_text_file(tmp_path):
    (tmp_path / "x.safetensors").write_text("hello")
    with pytest.raises(SyntheticSetError):
        load_synthetic(tmp_path / "x.safetensors")


def test_detects_modified_tensors(tmp_path):
    images, labels = _set()
    path = save_synthetic(tmp_path / "s.safetensors", images, labels, None, {})
    header = {"mdk.format": json.dumps(FORMAT),
              "mdk.tensors_sha256": json.dumps(tensors_sha256(images, labels))}
    save_file({"images": images + 1, "labels": labels}, str(path), metadata=header)
    with pytest.raises(SyntheticSetError, match="do not match the sha256"):
        load_synthetic(path)


def test_label_shape_mismatch_is_refused(tmp_path):
    save_file({"images": torch.zeros(4, 1, 2, 2), "labels": torch.zeros(3, dtype=torch.int64)},
              str(tmp_path / "m.safetensors"))
    with pytest.raises(SyntheticSetError, match="'labels' must have shape"):
        load_synthetic(tmp_path / "m.safetensors")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SyntheticSetError, match="does not exist"):
        load_synthetic(tmp_path / "nope.safetensors")


def test_atomic_write_gives_files_the_usual_mode(tmp_path):
    import os
    import stat

    from mim4dd_kit.core.files import atomic_write

    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == "x"


def test_format_names_are_fixed_strings():
    """The files' format names are part of the format, not of the module layout."""
    from mim4dd_kit.dd_losses.mtt.buffers import BUFFER_FORMAT
    from mim4dd_kit.run import statefile

    assert FORMAT == "mim4dd_kit.synthetic/1"
    assert statefile.FORMAT == "mim4dd_kit.checkpoint/1"
    assert BUFFER_FORMAT == "mdk-expert-buffer/1"
