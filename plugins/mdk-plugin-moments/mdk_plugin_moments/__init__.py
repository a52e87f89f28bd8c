"""Example third-party plugin package for mim4dd_kit, written against ``mim4dd_kit.api``
only: the ``moment_matching`` DD loss and the ``nearest_centroid`` evaluator."""

from .evaluator import NearestCentroid
from .loss import MomentMatching

__all__ = ["MomentMatching", "NearestCentroid"]
