"""Data set plugins: IDX reading, search paths, normalisation, splits, user files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_idx
from safetensors.torch import save_file

from mim4dd_kit.core.errors import DataError
from mim4dd_kit.datasets.digits import Digits
from mim4dd_kit.datasets.fashion_mnist import DEBIAN_DIR, FashionMNIST
from mim4dd_kit.datasets.idx import read_idx
from mim4dd_kit.datasets.tensor_file import TensorFile
from mim4dd_kit.datasets.torchvision_sets import CIFAR10, MNIST


def test_idx_round_trip_gz_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        write_idx(tmp_path / name, a)
        assert np.array_equal(read_idx(tmp_path / name), a)


def test_idx_corrupt_file_is_a_data_error(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 5), np.uint8))
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "a").write_bytes(data[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "b")


def _fake_fmnist(root: Path, n=20, m=10):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    tx = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    write_idx(root / "train-images-idx3-ubyte.gz", tx)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    write_idx(root / "t10k-images-idx3-ubyte.gz", tx[:m])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(m, dtype=np.uint8) % 10)
    return tx


def test_fashion_mnist_from_root_normalises_exactly(tmp_path):
    tx = _fake_fmnist(tmp_path / "fm")
    d = FashionMNIST(FashionMNIST.Params(root=tmp_path / "fm")).load()
    assert d.train_images.shape == (20, 1, 28, 28) and d.test_images.shape == (10, 1, 28, 28)
    expected = (torch.from_numpy(tx[3]).float() / 255 - 0.2861) / 0.3530
    torch.testing.assert_close(d.train_images[3, 0], expected)
    assert d.info.class_names[0] == "T-shirt/top" and d.info.num_classes == 10
    assert d.info.flip_ok
    again = FashionMNIST(FashionMNIST.Params(root=tmp_path / "fm")).load()
    assert d.identity["sha256"] == again.identity["sha256"] and d.identity["size"] == 20


def test_fashion_mnist_found_through_mdk_data(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path / "fashion-mnist")
    monkeypatch.setenv("MDK_DATA", str(tmp_path))
    assert FashionMNIST(FashionMNIST.Params()).locate() == tmp_path / "fashion-mnist"


def test_missing_fashion_mnist_names_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MDK_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr("mim4dd_kit.datasets.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    (tmp_path / "nowhere").mkdir()  # a root that exists but lacks the files
    with pytest.raises(DataError, match=r"searched .*empty.*dataset-fashion-mnist"):
        FashionMNIST(FashionMNIST.Params(root=tmp_path / "nowhere")).load()
    # a root that does not exist is a mistake, not a reason to search elsewhere
    with pytest.raises(DataError, match=r"dataset\.root .*missing does not exist"):
        FashionMNIST(FashionMNIST.Params(root=tmp_path / "missing")).load()


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    d = FashionMNIST(FashionMNIST.Params()).load()
    assert d.train_images.shape == (60000, 1, 28, 28) and len(d.test_labels) == 10000
    assert d.class_counts().tolist() == [6000] * 10
    assert abs(float(d.train_images.mean())) < 0.01  # the published mean centres the data


def test_digits_split_is_stratified_and_deterministic():
    a = Digits(Digits.Params()).load()
    b = Digits(Digits.Params()).load()
    assert len(a.train_labels) + len(a.test_labels) == 1797
    assert len(a.test_labels) == 360
    assert torch.equal(a.train_images, b.train_images)
    counts = a.test_labels.bincount().tolist()
    assert max(counts) - min(counts) <= 2
    assert not a.info.flip_ok and a.info.image_size == (8, 8)
    assert abs(float(a.train_images.mean())) < 1e-5  # normalised with its own statistics


def test_sample_per_class_draws_each_class(tmp_path):
    d = Digits(Digits.Params()).load()
    x, y = d.sample_per_class(7)
    assert x.shape == (70, 1, 8, 8) and y.tolist() == sorted(y.tolist())
    assert y.bincount().tolist() == [7] * 10
    # every drawn image is a training image of its label, and no image is drawn twice
    same = (x.flatten(1)[:, None] == d.train_images.flatten(1)[None]).all(-1)  # (70, N)
    same &= y[:, None] == d.train_labels[None]
    assert same.any(1).all()
    assert len({tuple(row) for row in x.flatten(1).tolist()}) == 70


def test_tensor_file_layouts(tmp_path):
    x = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8)
    y = torch.arange(40) % 4
    save_file({"images": x, "labels": y}, str(tmp_path / "a.safetensors"))
    d = TensorFile(TensorFile.Params(path=tmp_path / "a.safetensors")).load()
    assert len(d.train_labels) == 32 and len(d.test_labels) == 8
    assert d.info.channels == 3 and d.info.num_classes == 4
    torch.testing.assert_close(d.train_images.mean((0, 2, 3)), torch.zeros(3), atol=1e-5,
                               rtol=0)
    save_file({"train_images": x.float() / 255, "train_labels": y,
               "test_images": x[:4].float() / 255, "test_labels": y[:4].clone()},
              str(tmp_path / "b.safetensors"))
    d = TensorFile(TensorFile.Params(path=tmp_path / "b.safetensors",
                                     class_names=["a", "b", "c", "d"])).load()
    assert len(d.test_labels) == 4 and d.info.class_names == ("a", "b", "c", "d")


def test_tensor_file_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TensorFile(TensorFile.Params(path=tmp_path / "none.safetensors")).load()
    save_file({"pixels": torch.zeros(2)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(DataError, match="needs tensors"):
        TensorFile(TensorFile.Params(path=tmp_path / "c.safetensors")).load()
    save_file({"images": torch.zeros(4, 2, 2), "labels": torch.zeros(3, dtype=torch.int64)},
              str(tmp_path / "d.safetensors"))
    with pytest.raises(DataError, match="labels"):
        TensorFile(TensorFile.Params(path=tmp_path / "d.safetensors", test_fraction=0.5)).load()


@pytest.mark.parametrize("cls", [MNIST, CIFAR10])
def test_torchvision_sets_do_not_download_by_default(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("MDK_DATA", str(tmp_path))
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="download: true") as info:
        cls(cls.Params(root=tmp_path / "x")).load()
    message = str(info.value)
    # one spelling of the option (the recipe's), and the files expected under root:
    assert "download=True" not in message and "--set dataset.download=true" in message
    assert cls.layout in message and str(tmp_path / "x") in message
