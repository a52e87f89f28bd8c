"""How ``mdk`` talks on stderr: verbosity options and the toolkit's log records.

The library logs through the standard :mod:`logging` module under the ``mim4dd_kit``
logger and configures no handler. The command line adds one that writes plain lines to
stderr at the level the options ask for, and accepts its global options (``--debug``,
``-v``, ``-q``, ``--log-level``) before or after the subcommand.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from typer.core import TyperGroup

LOGGER = "mim4dd_kit"
LEVELS = ("debug", "info", "warning", "error")
#: global options without a value, and those that take one
FLAGS = frozenset({"--debug", "-v", "--verbose", "-vv", "-q", "--quiet", "-qq"})
VALUED = frozenset({"--log-level"})


def level_of(verbose: int, quiet: int, log_level: str | None) -> int:
    """INFO by default; each -v one step down (DEBUG), each -q one up; --log-level wins."""
    if log_level is not None:
        return getattr(logging, log_level.upper())
    steps = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    return steps[max(0, min(len(steps) - 1, 1 - verbose + quiet))]


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self, clean: Callable[[str], str]):
        super().__init__()
        self.clean = clean
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                            datefmt="%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.clean(self.format(record)) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure(level: int, clean: Callable[[str], str]) -> None:
    """Send the toolkit's records at ``level`` and above to stderr (one handler, replaced
    on each call), as plain lines with ``clean`` applied (control characters removed)."""
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(h)
    logger.addHandler(_Stderr(clean))
    logger.setLevel(level)
    logger.propagate = False


def hoist_global_options(args: list[str], commands: set[str]) -> list[str]:
    """``args`` with the global options found after the subcommand moved before it, so
    ``mdk validate r.yaml --debug`` means ``mdk --debug validate r.yaml``. Nothing after a
    ``--`` moves."""
    try:
        at = next(i for i, a in enumerate(args) if a in commands)
    except StopIteration:
        return args
    head, rest, moved = args[:at + 1], args[at + 1:], []
    kept: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--":
            kept += rest[i:]
            break
        if a in FLAGS or a.split("=", 1)[0] in VALUED and "=" in a:
            moved.append(a)
        elif a in VALUED and i + 1 < len(rest):
            moved += [a, rest[i + 1]]
            i += 1
        else:
            kept.append(a)
        i += 1
    return moved + head + kept if moved else args


class GlobalOptionsGroup(TyperGroup):
    """The root command group: global options are accepted after the subcommand too."""

    def parse_args(self, ctx, args):  # noqa: D102 - click's signature
        return super().parse_args(ctx, hoist_global_options(list(args), set(self.commands)))
