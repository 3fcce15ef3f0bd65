"""File locks between processes: the one place that takes a ``flock``.

A run directory is trained by one process at a time (``RunDir.locked``, the trainer's
lock inside the directory), a ``torchstn reproduce`` cell by one command at a time
(``CellLock``, beside the run directory: the command's parent holds it for its workers),
a record is rewritten by one command at a time and a kernel built by one process at a
time (:func:`exclusive`). All are ``flock``\\ s, which the system drops when their process ends, however it ends: a
killed process leaves no stale lock. Where ``fcntl`` is missing (Windows) nothing is
locked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TypeVar

try:
    import fcntl
except ImportError:  # Windows: nothing is locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["LockBusy", "PidLock", "exclusive"]

# errors of a directory this process may not write: there is nothing to guard there, and
# the caller's own checks say what is wrong
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


_Lock = TypeVar("_Lock", bound="PidLock")


class LockBusy(RuntimeError):
    """Another process holds the lock of ``path``: ``pid`` is its pid (``None`` before it has
    written it). Subclasses say what the holder does (``what``)."""

    what = "holds the lock"

    def __init__(self, pid: int | None, path: Path) -> None:
        super().__init__(f"another process{f' (pid {pid})' if pid else ''} {self.what} ({path})")
        self.pid = pid
        self.path = path


class PidLock:
    """An exclusive, non-blocking ``flock`` of the file ``path``, which holds its holder's pid.

    :meth:`acquire` makes the file's directory, takes the lock and writes the pid;
    :meth:`release` removes the file and lets the lock go, so that a lock file on disk
    is one that is held or was left by a killed process (whose ``flock`` the system
    dropped). A lock taken on a file that its holder removed meanwhile is taken again on
    the path's new file. :meth:`holder` asks, from any process, who holds it.

    Args:
        path: the lock file.
        busy: the exception :meth:`acquire` raises when another process holds the lock
            (a :class:`LockBusy`; subclasses say which lock).
    """

    def __init__(self, path: Path, busy: type[LockBusy] = LockBusy) -> None:
        self.path = Path(path)
        self._busy = busy
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._file is not None

    def acquire(self) -> bool:
        """Take the lock: ``True`` when taken, ``False`` where nothing can be locked (no ``fcntl``,
        or a directory this process may not write).

        Raises:
            LockBusy: (or ``busy``) another process holds the lock; its ``pid`` names it.
        """
        if fcntl is None:
            return False
        if self._file is not None:
            return True
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                file = open(self.path, "a+")  # noqa: SIM115 - held until release()
            except OSError as err:
                if err.errno in _NOT_WRITABLE:
                    return False
                raise
            if not self._lock(file):
                pid = _pid_in(file)
                file.close()
                raise self._busy(pid, self.path)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(file.fileno()), os.stat(self.path)):
                    break
            file.close()  # (its holder removed the file before letting go: take the path's new one)
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file
        return True

    @staticmethod
    def _lock(file: IO[str]) -> bool:
        """The exclusive lock of ``file``, tried three times 50 ms apart (:meth:`holder` takes a
        shared one for an instant); whether it was taken."""
        for attempt in range(3):
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if attempt < 2:
                    time.sleep(0.05)
        return False

    def release(self) -> None:
        """Remove the file and let the lock go (nothing if this object does not hold it)."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # (removed while still held: see acquire)
                os.unlink(self.path)
            self._file.close()
            self._file = None

    def holder(self) -> int | None:
        """The pid of the process that holds the lock (0 before it has written it), or ``None``
        when it is free."""
        if fcntl is None:
            return None
        try:
            file = open(self.path)  # noqa: SIM115 - closed below
        except OSError:  # (no lock file: free)
            return None
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _pid_in(file) or 0
            return None

    def __enter__(self: _Lock) -> _Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_in(file: IO[str]) -> int | None:
    """The pid a lock file holds (``None`` before its holder has written it)."""
    file.seek(0)
    text = file.read().strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def exclusive(path: Path, waiting: str | None = None) -> Iterator[bool]:
    """Inside: this process holds an exclusive, blocking ``flock`` of ``path``: a directory (for a
    short read-modify-write of a file in it), or a lock file, made if missing. Yields ``True``;
    ``False`` where ``fcntl`` is missing and nothing is locked. With ``waiting``, a wait for
    another process says so on stderr (``torchstn: waiting for WAITING ... done in N s``: a build
    that waited a minute without a word looked like a hang)."""
    if fcntl is None:
        yield False
        return
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(f"torchstn: waiting for {waiting} ...", end="", file=sys.stderr, flush=True)
            start = time.perf_counter()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if waiting:
                print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        yield True
    finally:
        os.close(fd)  # (drops the lock)
