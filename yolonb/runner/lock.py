"""An exclusive lock on run_all.py's output folder, so that two invocations never write into it at once.

The lock is `fcntl.flock` on `<out>/.run_all.lock`. The operating system drops a flock
when the process that holds it exits, however it exits (SIGKILL and crashes included),
so a killed run_all.py never leaves a lock that blocks the next one. The file itself
stays and, while locked, contains a JSON record of the holder (pid, host, start time,
command line), which the error message of a second invocation shows.

filelock's UnixFileLock also uses flock, but it truncates the lock file on every attempt
to acquire it, which would erase the holder's record that the error message reads.
NOTE: fcntl exists on Linux and macOS only; run_all.py does not run on Windows.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_NAME = ".run_all.lock"


class OutputFolderError(RuntimeError):
    """The output folder cannot be created or written."""


class OutputLockedError(RuntimeError):
    """Another process holds the lock on the output folder.

    Attributes:
        lock_path: the lock file.
        holder: the holder's record (pid, host, started, command), or None when unreadable.
    """

    def __init__(self, message: str, lock_path: Path, holder: dict[str, Any] | None):
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


def describe_holder(holder: dict[str, Any] | None) -> str:
    """Return "pid 123 on host h, started 2025-01-01 10:00:00: run_all.py --out x" for an error message."""
    if not holder:
        return "a process whose record is not written yet"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


def read_holder(lock_path: Path) -> dict[str, Any] | None:
    """Return the record in `lock_path`, or None when the file is missing, empty or not a record."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


class OutputLock:
    """The lock of one output folder; use `acquire` and `release`, or a `with` block."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.previous: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> "OutputLock":
        """Take the lock, creating the output folder first.

        Args:
            wait: when another process holds the lock, block until it ends instead of raising.

        Returns:
            self. `self.previous` is the record of an earlier holder that exited without
            releasing the lock (it was killed), else None.

        Raises:
            OutputFolderError: the folder or the lock file cannot be created or written.
            OutputLockedError: another process holds the lock and `wait` is False.
        """
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # os.open's descriptors are not inherited by child processes (PEP 446), so a
            # notebook kernel that outlives run_all.py does not keep the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputFolderError(_unwritable_message(self.out_dir, error)) from error

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.path)
            if not wait:
                os.close(fd)
                raise OutputLockedError(
                    f"output folder {self.out_dir} is locked: {describe_holder(holder)} has the lock "
                    f"file {self.path}. Wait for it to finish or stop it (kill {holder.get('pid') if holder else 'PID'}), "
                    f"pass --wait-lock to start as soon as it ends, or choose another --out to run both at once",
                    self.path, holder,
                ) from None
            logger.warning("waiting for %s to release %s", describe_holder(holder), self.path)
            fcntl.flock(fd, fcntl.LOCK_EX)

        self._fd = fd
        self.previous = read_holder(self.path)
        try:
            self._write_record()
        except OSError as error:
            self.release()
            raise OutputFolderError(_unwritable_message(self.out_dir, error)) from error
        if self.previous is not None:
            logger.warning("the previous run_all.py on %s (%s) ended without releasing its lock, so it was "
                           "killed or crashed; runs it did not finish are run again", self.out_dir,
                           describe_holder(self.previous))
        return self

    def _write_record(self) -> None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        data = json.dumps(record).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Empty the lock file and release the lock.

        The file is kept: a waiting process may have it open already, and deleting it would
        let that process and a new one lock two different files.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # An empty file shows the next holder that this one ended cleanly.
            os.ftruncate(fd, 0)
        except OSError as error:
            logger.warning("could not empty the lock file %s: %s", self.path, error)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _unwritable_message(out_dir: Path, error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that file system or choose another --out"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a part of that path is a file, not a folder; choose another --out"
    else:
        fix = "make the folder writable or choose another --out"
    return f"the output folder {out_dir} is not writable: {error}; {fix}"
