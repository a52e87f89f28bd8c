"""The example package's loss and evaluator: their own maths, then the toolkit's
conformance checks (mim4dd_kit.testing)."""

import pytest
import torch
from mdk_plugin_moments.evaluator import NearestCentroid
from mdk_plugin_moments.loss import MomentMatching, class_moments

from mim4dd_kit import testing
from mim4dd_kit.api import DataInfo, EvalRequest, RealData

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:entrypoints")


def test_class_moments_are_per_class_mean_and_population_variance():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1])
    mean, var = class_moments(x, y, 3)
    assert torch.equal(mean, torch.tensor([[2.0, 1.0], [6.0, 5.0], [0.0, 0.0]]))
    assert torch.equal(var, torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))


def _data(test_x, test_y):
    info = DataInfo("toy", 2, 1, (1, 2), (0.0,), (1.0,), ("a", "b"))
    train = torch.zeros(2, 1, 1, 2)
    return RealData(info, train, torch.tensor([0, 1]), test_x, test_y)


def test_nearest_centroid_scores_the_test_split():
    syn = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 10.0]]).reshape(3, 1, 1, 2)
    syn_y = torch.tensor([0, 0, 1])  # centroids (0, 1) and (10, 10)
    test = torch.tensor([[0.0, 1.0], [9.0, 9.0], [4.0, 4.0], [6.0, 6.0]]).reshape(4, 1, 1, 2)
    test_y = torch.tensor([0, 1, 1, 1])  # (4, 4) is nearer class 0: 3 of 4 right
    request = EvalRequest(syn, syn_y, None, _data(test, test_y), torch.device("cpu"), 0,
                          None, None)
    result = NearestCentroid(NearestCentroid.Params()).evaluate(request, None)
    assert result["nc_accuracy"] == 75.0 and result.headline_value == 75.0
    assert result["classes_present"] == 2 and result["test_size"] == 4


def test_builds_from_its_params():
    testing.check_builds_from_params(NearestCentroid, "evaluators")
    with pytest.raises(Exception, match="var_weight"):
        MomentMatching.Params(var_weight=-1)


def test_evaluator_conformance():
    result = testing.check_evaluator_result("nearest_centroid")
    assert 0.0 <= result.headline_value <= 100.0


def test_loss_hands_features_over(tmp_path):
    testing.check_feature_handoff(testing.tiny_recipe({"name": "moment_matching"}), tmp_path)


def test_loss_resumes_exactly(tmp_path):
    testing.check_resume_is_exact(testing.tiny_recipe({"name": "moment_matching"}), tmp_path)


def test_lambda_zero_is_exact(tmp_path):
    testing.check_lambda_zero_is_exact(testing.tiny_recipe({"name": "moment_matching"}),
                                       tmp_path)


def test_variance_weight_zero_is_distribution_matching(tmp_path):
    """With var_weight 0 the loss is DM's: same images as the built-in dm, bit for bit."""
    mine = testing.tiny_recipe({"name": "moment_matching", "var_weight": 0.0},
                               synthetic={"iterations": 3})
    dm = testing.tiny_recipe({"name": "dm"}, synthetic={"iterations": 3})
    a = testing.distill(mine, tmp_path / "a")
    b = testing.distill(dm, tmp_path / "b")
    torch.testing.assert_close(a.images, b.images, rtol=1e-5, atol=1e-5)
