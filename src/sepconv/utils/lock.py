"""An exclusive lock on a directory, released on exit and recognised as stale after a crash.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file
systems) holding the owner's process id, host name and start time as JSON.
A second process finds the file and is refused with the owner named, unless
the owner is on this host and no longer runs (``os.kill(pid, 0)`` fails with
``ProcessLookupError``): then the lock is stale and is taken over. A lock held
from another host is never broken automatically: the message says which file
to remove once that run is known to be gone.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

#: Name of the lock file inside the locked directory.
LOCK_NAME = ".sepconv.lock"


class DirectoryBusy(ValueError):
    """Another live process holds the lock (a ``ValueError``: the CLI reports it as a usage error, exit 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class DirectoryLock:
    """Exclusive use of ``directory`` by this process (context manager; also released at interpreter exit).

    ``what`` names the holder in messages (e.g. ``"sepconv compare"``).
    :meth:`acquire` raises :class:`DirectoryBusy` naming the owner's pid and
    host when a live process holds it.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "sepconv"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self.held = False
        self._token = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self._token, handle)
        return True

    def owner(self) -> Optional[dict[str, Any]]:
        """The lock file's content (``None`` when absent; ``{}`` when unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, owner: dict[str, Any]) -> bool:
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            return False
        return pid != os.getpid() and not _alive(pid)

    def _break(self, owner: dict[str, Any]) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (then it is put back)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            taken = json.loads(aside.read_text())
        except (OSError, ValueError):
            taken = {}
        if taken != owner:  # a fresh lock was moved aside: restore it (fails only if yet another one exists)
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        os.unlink(aside)

    def acquire(self) -> None:
        """Take the lock (creating ``directory`` if needed), breaking it if stale; :class:`DirectoryBusy` if held."""
        if self.held:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                atexit.register(self.release)
                return
            owner = self.owner()
            if owner is None:
                continue  # released between the two steps: try again
            if owner and self._stale(owner):
                self._break(owner)
                continue
            break
        owner = self.owner() or {}
        who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
        raise DirectoryBusy(
            f"{str(self.directory)!r} is in use by another {owner.get('what', self.what)} ({who}); wait for it to "
            f"finish, or remove {str(self.path)!r} if that process is gone"
        )

    def release(self) -> None:
        """Give the lock up (only if this process still owns the file). Safe to call twice."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        if self.owner() == self._token:
            try:
                os.unlink(self.path)
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise
