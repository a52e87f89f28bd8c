"""ZCA whitening (MTT's kornia ZCAWhitening conventions) and the data sets' zca option."""

import pytest
import torch

from mim4dd_kit.config.registry import default_registry
from mim4dd_kit.core.errors import RecipeError
from mim4dd_kit.datasets.zca import fit_zca


def _cov(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1).double()
    flat = flat - flat.mean(0)
    return flat.T @ flat / (len(x) - 1)


def _load(**params):
    return default_registry().build("datasets", {"name": "digits", **params}).load()


def test_whitened_covariance_has_eigenvalues_s_over_s_plus_eps():
    g = torch.Generator().manual_seed(0)
    # correlated data with a wide spread of variances: x = z A, A random
    x = (torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g)).reshape(500, 3, 2, 2)
    zca = fit_zca(x, eps=0.1)
    s = torch.linalg.eigvalsh(_cov(x))  # unbiased covariance, as kornia's default
    torch.testing.assert_close(zca.eigenvalues.sort().values, s.clamp(min=0), rtol=1e-6,
                               atol=1e-9)
    white = zca(x)
    assert white.shape == x.shape and white.dtype == torch.float32
    got = torch.linalg.eigvalsh(_cov(white))
    torch.testing.assert_close(got, (s / (s + 0.1)).sort().values, rtol=1e-4, atol=1e-5)
    # centred, and ZCA is the symmetric whitening: W = W^T
    assert white.reshape(500, -1).mean(0).abs().max() < 1e-5
    torch.testing.assert_close(zca.transform, zca.transform.T)


def test_known_two_feature_case_by_hand():
    # features independent, variances 4 and 1 (unbiased): W = diag(1/sqrt(4+eps), 1/sqrt(1+eps))
    x = torch.tensor([[2.0, 1.0], [-2.0, -1.0], [2.0, -1.0], [-2.0, 1.0]])  # var: 16/3, 4/3
    zca = fit_zca(x[:, :, None, None], eps=0.5)
    expected = torch.diag(torch.tensor([1 / (16 / 3 + 0.5), 1 / (4 / 3 + 0.5)]).sqrt())
    torch.testing.assert_close(zca.transform, expected.double())
    torch.testing.assert_close(zca(x[:, :, None, None]).reshape(4, 2), (x @ expected).float())


def test_digits_zca_matches_a_fit_on_the_raw_training_images():
    plain, white = _load(), _load(zca=True)
    info = plain.info
    mean = torch.tensor(info.mean)[None, :, None, None]
    std = torch.tensor(info.std)[None, :, None, None]
    raw_train = plain.train_images * std + mean  # back to [0, 1]
    raw_test = plain.test_images * std + mean
    zca = fit_zca(raw_train, eps=0.1)
    # train and test go through the same transform, fitted on the training split only
    torch.testing.assert_close(white.train_images, zca(raw_train), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(white.test_images, zca(raw_test), atol=1e-4, rtol=1e-4)
    s = torch.linalg.eigvalsh(_cov(raw_train))
    got = torch.linalg.eigvalsh(_cov(white.train_images))
    torch.testing.assert_close(got, (s / (s + 0.1)).sort().values, rtol=1e-3, atol=1e-4)
    assert white.info.mean == (0.0,) and white.info.std == (1.0,)
    assert white.identity["zca"]["eps"] == 0.1 and "zca" not in plain.identity
    torch.testing.assert_close(white.train_labels, plain.train_labels)


def test_zca_eps_is_a_parameter_and_false_leaves_data_unchanged():
    default, off = _load(), _load(zca=False, zca_eps=0.5)
    torch.testing.assert_close(off.train_images, default.train_images, rtol=0, atol=0)
    torch.testing.assert_close(off.test_images, default.test_images, rtol=0, atol=0)
    assert off.identity == default.identity
    strong = _load(zca=True, zca_eps=1.0)
    assert strong.identity["zca"]["eps"] == 1.0
    # a larger eps whitens less: the total variance is smaller
    assert strong.train_images.var() < _load(zca=True).train_images.var()


@pytest.mark.parametrize("name", ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                                  "svhn"])
def test_zca_params_validate_on_every_image_data_set(name):
    reg = default_registry()
    params = reg.validate("datasets", {"name": name, "zca": True, "zca_eps": 0.2})
    assert params.zca is True and params.zca_eps == 0.2
    with pytest.raises(RecipeError, match="zca_eps"):
        reg.validate("datasets", {"name": name, "zca_eps": 0})


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        fit_zca(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="eps"):
        fit_zca(torch.zeros(3, 1, 2, 2), eps=0)
    with pytest.raises(ValueError, match="fitted on 4"):
        fit_zca(torch.randn(5, 1, 2, 2))(torch.zeros(2, 1, 3, 3))
