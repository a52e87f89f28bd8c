"""Parameters models of the built-in data sets, importable without torch.

Reached through the ``mdk.params.datasets`` entry points (pyproject.toml) when a recipe is
validated; each data set class keeps its model as ``Params``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..api.params import Params


class ZCAParams(Params):
    """Parameters shared by the image data sets that offer ZCA whitening (MTT's CIFAR)."""

    zca: bool = Field(
        False, description="ZCA-whiten train and test images with a transform fitted on the "
        "training images, instead of mean/std normalisation (MTT's CIFAR setting)"
    )
    zca_eps: float = Field(
        0.1, gt=0, description="eps added to the covariance eigenvalues (MTT: kornia "
        "ZCAWhitening(eps=0.1))"
    )


class FashionMNISTParams(ZCAParams):
    root: Path | None = Field(None, description="folder with the four IDX files")
    download: bool = Field(False, description="download with torchvision if missing")


class TorchvisionParams(ZCAParams):
    root: Path | None = Field(None, description="torchvision root folder")
    download: bool = Field(False, description="download if missing (needs a network)")


class DigitsParams(ZCAParams):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out test share")
    split_seed: int = Field(0, description="seed of the stratified split")


class TensorFileParams(Params):
    path: Path = Field(description="safetensors file with the images and labels")
    mean: list[float] | None = Field(None, description="per-channel mean; default: data")
    std: list[float] | None = Field(None, description="per-channel std; default: data")
    class_names: list[str] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1, description="split share of images/labels")
    split_seed: int = 0
    flip_ok: bool = Field(True, description="may horizontal flips augment this data")
