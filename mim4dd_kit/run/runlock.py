"""One run per folder: a lock file naming its owner, and the clean-up of a killed write.

:class:`RunLock` creates ``<run folder>/.mdk.lock`` exclusively (``O_CREAT | O_EXCL``)
holding the owner's pid, host and start time as JSON. A second run into the same folder
stops with an error naming the file and the owner. A lock left by a process that no
longer exists on this host (``kill -9``, a crash) is taken over; a lock from another host
is never guessed stale (the folder may be shared over a network file system).
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import socket
from pathlib import Path

from ..core.errors import RunError

LOCK_NAME = ".mdk.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


class RunLock:
    """The lock of one run folder (created on :meth:`acquire`, removed on :meth:`release`,
    with the folder itself when the lock made it and nothing else was written there)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False
        self.made_dir = False

    def _owner_text(self) -> str:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now})

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self._owner_text())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _owner(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")[:4096])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        try:
            self.made_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the run folder {self.run_dir}: "
                           f"{exc.strerror or exc}; choose another --out") from None
        for _ in range(3):
            try:
                if self._create():
                    self.held = True
                    return
            except OSError as exc:
                raise RunError(f"cannot write to the run folder {self.run_dir} ({self.path}: "
                               f"{exc.strerror or exc}); choose another --out") from None
            owner = self._owner()
            if owner == {}:  # released meanwhile: try again
                continue
            pid, host = (owner or {}).get("pid"), (owner or {}).get("host")
            if (isinstance(pid, int) and not isinstance(pid, bool)
                    and host == socket.gethostname() and not _pid_alive(pid)):
                self._take_over()
                continue
            raise RunError(self._held_message(owner))
        raise RunError(self._held_message(self._owner()))

    def _take_over(self) -> None:
        # rename first: of two processes finding the same stale lock, one renames it
        stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, stale)
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)

    def _held_message(self, owner: dict | None) -> str:
        if not owner:
            who = "an unreadable owner"
        else:
            who = (f"process {str(owner.get('pid'))[:20]} on host "
                   f"{str(owner.get('host'))[:64]!r} since {str(owner.get('since'))[:40]}")
        return (f"the run folder {self.run_dir} is in use by another mdk run ({who}; lock file "
                f"{self.path}); wait for that run to finish or choose another --out. If that "
                "process is gone, delete the lock file")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.made_dir:  # a run that stopped before writing anything leaves no folder
                try:
                    self.run_dir.rmdir()
                except OSError:
                    pass


def remove_stale_temporaries(run_dir: Path, names: list[str]) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files a killed atomic write left behind (call with the
    folder's lock held, so that no write of another run is in progress)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for name in names:
        for tmp in run_dir.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed
