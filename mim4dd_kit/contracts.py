"""Deprecated: the plugin API now lives in :mod:`mim4dd_kit.api`.

This module re-exports it so plugins written against ``mim4dd_kit.contracts`` keep
working; importing it warns. Import from ``mim4dd_kit.api`` instead.
"""

import warnings

from .api import *  # noqa: F403
from .api import __all__ as __all__  # noqa: F401
from .api.plugins import Augmentation as Augmentation
from .api.plugins import DDLoss as DDLoss
from .api.plugins import Evaluator as Evaluator
from .api.plugins import Regularizer as Regularizer

warnings.warn(
    "mim4dd_kit.contracts is deprecated; import the plugin API from mim4dd_kit.api",
    DeprecationWarning,
    stacklevel=2,
)
