"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file."""

from __future__ import annotations

import errno
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it over `path`.

    A reader thus sees the old file or the complete new one, never a partial file,
    even when the process is killed while writing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)

    # open(..., "xb") rather than tempfile.mkstemp, whose files are private (mode 0600)
    # where the run folder's files should follow the umask like any other output.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        # The temporary name in the original message would send the user looking for a file that is gone.
        raise OSError(error.errno, f"writing {path} failed: {error.strerror}; {_write_fix(error.errno)}") from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_fix(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that file system or choose another output folder, then run again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable or choose another output folder, then run again"
    return "check the folder, then run again"


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write(Path(path), lambda file: file.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of `atomic_write` under `folder` whose writing process has died.

    A process killed while writing (SIGKILL, or a notebook kernel that exits when its
    parent is killed) leaves its temporary file behind, and a checkpoint's can be hundreds
    of megabytes. A file whose writer is still running is kept.

    Returns:
        The deleted paths.
    """
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match is None or _process_exists(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# The name atomic_write gives its temporary files: .<name>.<pid>.<8 hex digits>.tmp
_TEMPORARY_NAME = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
