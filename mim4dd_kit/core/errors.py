"""The toolkit's error hierarchy.

Every error a user can cause by their input (a recipe, a file, a plugin name, missing
data) is an :class:`MdkError`. The CLI turns these into a one-paragraph message and a
non-zero exit code in one place (``cli.py``); anything else is a bug and is reported
as such.
"""

from __future__ import annotations


class MdkError(Exception):
    """Base class of every error caused by user input. ``str(err)`` is the message."""

    exit_code = 2


class RecipeError(MdkError):
    """A recipe is malformed, has an unknown key, or a parameter is invalid."""


class BuildError(RecipeError, ValueError):
    """A component cannot be built for this data set (a backbone too deep for its image
    size); a ``ValueError`` too, so plugins may raise it where they raised that."""


class PluginError(MdkError):
    """A plugin is unknown, ambiguous, fails to import, or breaks its contract."""


class DataError(MdkError):
    """A data set cannot be found, read, or does not fit the run."""


class SyntheticSetError(MdkError):
    """A file is not a readable synthetic set, or its content contradicts its metadata."""


class CheckpointError(MdkError):
    """A checkpoint is missing, unreadable, or belongs to a different recipe."""


class RunError(MdkError):
    """A run cannot start or continue as asked (existing outputs, diverged loss)."""


class OutputError(RunError):
    """An output file cannot be written (an unwritable folder, a full disk)."""


class ReportError(MdkError):
    """An output (plot, export, comparison, report) cannot be made from the given input."""


class MissingExtraError(ReportError):
    """An optional dependency (matplotlib, the ``plot`` extra) is not installed."""
