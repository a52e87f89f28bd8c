"""Fashion-MNIST (Xiao et al., 2017) from local IDX files; Debian's package works offline."""

from __future__ import annotations

from pathlib import Path

from ..api import RealData
from ..core.errors import DataError
from ._common import build_real_data, content_sha256, data_roots, to_float_nchw
from .idx import read_idx
from .params import FashionMNISTParams

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


class FashionMNIST:
    """Fashion-MNIST, 28x28 grey, 10 classes (IDX files; Debian dataset-fashion-mnist)."""

    #: normalisation of the DC/DSA/DM reference code (VICO-UoE/DatasetCondensation)
    MEAN, STD = (0.2861,), (0.3530,)

    Params = FashionMNISTParams

    def __init__(self, params: FashionMNIST.Params):
        self.params = params

    def candidates(self) -> list[Path]:
        dirs = data_roots(self.params.root, "fashion-mnist", "FashionMNIST/raw",
                          download=self.params.download)
        return dirs + [DEBIAN_DIR]

    def locate(self) -> Path | None:
        for d in self.candidates():
            if all(_find(d, f) for f in FILES):
                return d
        return None

    def load(self) -> RealData:
        directory = self.locate()
        if directory is None and self.params.download:
            import torchvision

            root = data_roots(self.params.root, download=True)[0]
            try:
                torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
                torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
            except Exception as exc:
                raise DataError(f"downloading Fashion-MNIST into {root} failed: {exc}") from None
            directory = self.locate()
        if directory is None:
            searched = ", ".join(str(d) for d in self.candidates())
            raise DataError(
                f"Fashion-MNIST IDX files not found (searched {searched}); install them with "
                "`apt-get install -y dataset-fashion-mnist`, point `root:` or MDK_DATA at a "
                "folder holding them, or set `download: true`"
            )
        tx, ty, vx, vy = (read_idx(_find(directory, f)) for f in FILES)
        if tx.shape[1:] != (28, 28) or len(tx) != len(ty) or len(vx) != len(vy):
            raise DataError(f"Fashion-MNIST files in {directory} have unexpected shapes")
        return build_real_data(
            "fashion_mnist", to_float_nchw(tx), ty, to_float_nchw(vx), vy,
            mean=self.MEAN, std=self.STD, class_names=CLASSES, flip_ok=True,
            sha256=content_sha256(tx, ty),
            zca_eps=self.params.zca_eps if self.params.zca else None,
        )
