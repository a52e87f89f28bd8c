"""mim4dd_kit: dataset distillation with the MIM4DD mutual-information regularizer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mim4dd_kit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
