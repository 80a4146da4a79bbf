"""Small durable-file helpers shared by the stores (the segment writer has its own file
layer): the one way to write a whole file atomically, and a directory fsync.
A base module: imports nothing of callvault, importable by every package."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data`` whole or not at all: ``<name>.tmp`` created
    (never through a symlink) with exactly ``mode``, written and fsynced, renamed
    over ``path``, the directory fsynced. A ``<name>.tmp`` left by a crash is
    replaced; one this call created is removed if it fails before the rename.
    Two writers of one path need a lock of their own (the key file holds one).
    With ``exclusive``, FileExistsError (and no change) if ``path`` appeared
    meanwhile."""
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:  # left by a crash
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may only have narrowed it; be exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive and path.exists():
            raise FileExistsError(f"{path} appeared while it was being created")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
