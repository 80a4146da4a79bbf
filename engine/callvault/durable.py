"""Small durable-file helpers shared by the stores (the segment writer has its own file layer)."""

from __future__ import annotations

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
    """Replace ``path`` with ``data`` whole or not at all: temp file, fsync,
    rename, fsync of the directory. The file gets exactly ``mode``. With
    ``exclusive``, FileExistsError (and no change) if ``path`` appeared meanwhile."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if exclusive and path.exists():
        tmp.unlink()
        raise FileExistsError(f"{path} appeared while it was being created")
    os.replace(tmp, path)
    fsync_dir(path.parent)
