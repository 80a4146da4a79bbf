"""The file layer under the segment store, and a fault-injecting twin for tests.

The segment store (``callvault.store.segment``) touches the disk only through a
:class:`FileSystem`. :data:`REAL_FS` is the real one (the ``os`` module:
``O_APPEND`` writes, ``os.pread``, ``os.fsync`` of files and directories).
:class:`FaultyFS` wraps another file system and, for tests, injects the faults
a durable store must survive:

* an ``fsync`` that fails with ``EIO`` (on the Nth call, once or from then on):
  after such an error the state of the page cache is unknown (PostgreSQL's
  "fsyncgate"), so the store must stop acknowledging;
* a short ``write`` (fewer bytes taken than offered, as POSIX allows) and a
  ``write`` that fails (``ENOSPC``);
* a crash: :meth:`FaultyFS.crash` truncates every file it has seen to the
  length last made durable by ``fsync``, removes files whose creation was not
  made durable by an ``fsync`` of their directory, and kills every open handle
  (any later call on them raises ``EIO``), as if the process and the machine
  had stopped at that instant.

Contract of a :class:`File`: ``write`` appends (the file is opened with
``O_APPEND``) and returns how many bytes it took, which may be fewer than
offered; ``pread`` returns fewer bytes than asked only at the end of the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["REAL_FS", "FaultyFS", "File", "FileSystem", "RealFS"]


class File(Protocol):
    """An open file: appends, positional reads, fsync, truncate."""

    path: str

    def write(self, data: bytes | memoryview) -> int: ...

    def pread(self, size: int, offset: int) -> bytes: ...

    def fsync(self) -> None: ...

    def truncate(self, length: int) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """What the segment store needs from a file system."""

    def create(self, path: str) -> File:
        """Create a new file (it must not exist), open for append and read."""
        ...

    def open_append(self, path: str) -> File:
        """Open an existing file for append and read."""
        ...

    def open_read(self, path: str) -> File:
        """Open an existing file for reading only."""
        ...

    def fsync_dir(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def isdir(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def getsize(self, path: str) -> int: ...


class _RealFile:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def write(self, data: bytes | memoryview) -> int:
        return os.write(self._fd, data)

    def pread(self, size: int, offset: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(parts)

    def fsync(self) -> None:
        os.fsync(self._fd)

    def truncate(self, length: int) -> None:
        os.ftruncate(self._fd, length)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RealFS:
    """The real file system (``os``)."""

    def create(self, path: str) -> File:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return _RealFile(path, os.open(path, flags, 0o640))

    def open_append(self, path: str) -> File:
        return _RealFile(path, os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC))

    def open_read(self, path: str) -> File:
        return _RealFile(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def getsize(self, path: str) -> int:
        return os.path.getsize(path)


REAL_FS: FileSystem = RealFS()


def _eio(what: str) -> OSError:
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected: {what})")


@dataclass
class _Fault:
    """A fault armed for the Nth future call of one operation."""

    countdown: int  # calls left before the fault fires (1: the next call)
    persist: bool  # fire on every later call too
    keep: int = 0  # short write: bytes actually written
    err: int = errno.EIO


@dataclass
class _Tracked:
    """What FaultyFS knows of one path: its durable length and entry."""

    synced: int  # bytes made durable by fsync
    entry_durable: bool  # the directory entry survives a crash
    handles: list[_FaultyFile] = field(default_factory=list)


class _FaultyFile:
    def __init__(self, fs: FaultyFS, inner: File, tracked: _Tracked) -> None:
        self.path = inner.path
        self._fs = fs
        self._inner = inner
        self._tracked = tracked
        self.dead = False

    def _check(self) -> None:
        if self.dead:
            raise _eio(f"{self.path}: handle lost in a simulated crash")

    def write(self, data: bytes | memoryview) -> int:
        with self._fs._lock:
            self._check()
            self._fs.write_count += 1
            fault = self._fs._fire("write")
            if fault is not None:
                if fault.keep <= 0:
                    raise OSError(fault.err, f"{os.strerror(fault.err)} (injected write fault)")
                return self._inner.write(memoryview(data)[: min(fault.keep, len(data))])
            return self._inner.write(data)

    def pread(self, size: int, offset: int) -> bytes:
        with self._fs._lock:
            self._check()
            return self._inner.pread(size, offset)

    def fsync(self) -> None:
        with self._fs._lock:
            self._check()
            self._fs.fsync_count += 1
            if self._fs._fire("fsync") is not None:
                raise _eio(f"fsync of {self.path}")
            self._inner.fsync()
            self._tracked.synced = self._inner.size()

    def truncate(self, length: int) -> None:
        with self._fs._lock:
            self._check()
            self._inner.truncate(length)
            self._tracked.synced = min(self._tracked.synced, length)

    def size(self) -> int:
        with self._fs._lock:
            self._check()
            return self._inner.size()

    def close(self) -> None:
        with self._fs._lock:
            if self in self._tracked.handles:
                self._tracked.handles.remove(self)
            self._inner.close()


class FaultyFS:
    """A :class:`FileSystem` over ``inner`` that counts calls and injects faults.

    Counters: ``fsync_count`` (file fsyncs), ``dir_fsync_count``, ``write_count``.
    Every operation holds one lock, so :meth:`crash` happens between two
    operations, never inside one.
    """

    def __init__(self, inner: FileSystem | None = None) -> None:
        self._inner: FileSystem = inner if inner is not None else REAL_FS
        self._lock = threading.RLock()
        self._files: dict[str, _Tracked] = {}
        self._faults: dict[str, _Fault] = {}
        self.fsync_count = 0
        self.dir_fsync_count = 0
        self.write_count = 0
        self.crashes = 0

    # -- fault injection -------------------------------------------------

    def fail_fsync(self, nth: int = 1, *, persist: bool = True) -> None:
        """Make the ``nth`` file fsync from now (1: the next) fail with EIO;
        with ``persist``, every fsync after it fails too."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        with self._lock:
            self._faults["fsync"] = _Fault(nth, persist)

    def fail_write(self, nth: int = 1, *, err: int = errno.ENOSPC, persist: bool = True) -> None:
        """Make the ``nth`` write from now raise ``OSError(err)``."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        with self._lock:
            self._faults["write"] = _Fault(nth, persist, keep=0, err=err)

    def short_write(self, nth: int = 1, *, keep: int) -> None:
        """Make the ``nth`` write from now take only its first ``keep`` bytes (> 0)."""
        if nth < 1 or keep < 1:
            raise ValueError("nth counts from 1 and keep must be positive")
        with self._lock:
            self._faults["write"] = _Fault(nth, False, keep=keep)

    def _fire(self, op: str) -> _Fault | None:
        fault = self._faults.get(op)
        if fault is None:
            return None
        fault.countdown -= 1
        if fault.countdown > 0:
            return None
        if not fault.persist:
            del self._faults[op]
        return fault

    def synced_length(self, path: str) -> int:
        """The durable length of ``path`` as a crash would leave it."""
        with self._lock:
            return self._files[path].synced

    def crash(self) -> None:
        """Lose everything not made durable, and every open handle (see module doc)."""
        with self._lock:
            self.crashes += 1
            for path, tracked in list(self._files.items()):
                for handle in tracked.handles:
                    handle.dead = True
                    handle._inner.close()
                tracked.handles.clear()
                if not tracked.entry_durable:
                    with contextlib.suppress(FileNotFoundError):
                        self._inner.remove(path)
                    del self._files[path]
                    continue
                try:
                    size = self._inner.getsize(path)
                except FileNotFoundError:
                    del self._files[path]
                    continue
                if size > tracked.synced:
                    handle_ = self._inner.open_append(path)
                    try:
                        handle_.truncate(tracked.synced)
                        handle_.fsync()
                    finally:
                        handle_.close()
            self._faults.clear()

    # -- FileSystem ------------------------------------------------------

    def _track(self, path: str, inner: File, *, created: bool) -> File:
        tracked = self._files.get(path)
        if tracked is None or created:
            size = 0 if created else inner.size()
            tracked = _Tracked(synced=size, entry_durable=not created)
            self._files[path] = tracked
        handle = _FaultyFile(self, inner, tracked)
        tracked.handles.append(handle)
        return handle

    def create(self, path: str) -> File:
        with self._lock:
            return self._track(path, self._inner.create(path), created=True)

    def open_append(self, path: str) -> File:
        with self._lock:
            return self._track(path, self._inner.open_append(path), created=False)

    def open_read(self, path: str) -> File:
        with self._lock:
            return self._track(path, self._inner.open_read(path), created=False)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self.dir_fsync_count += 1
            if self._fire("fsync") is not None:
                raise _eio(f"fsync of directory {path}")
            self._inner.fsync_dir(path)
            norm = os.path.normpath(path)
            for fpath, tracked in self._files.items():
                if os.path.dirname(os.path.normpath(fpath)) == norm:
                    tracked.entry_durable = True

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            return self._inner.listdir(path)

    def isdir(self, path: str) -> bool:
        with self._lock:
            return self._inner.isdir(path)

    def makedirs(self, path: str) -> None:
        with self._lock:
            self._inner.makedirs(path)

    def remove(self, path: str) -> None:
        with self._lock:
            self._inner.remove(path)
            self._files.pop(path, None)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._inner.rename(src, dst)
            tracked = self._files.pop(src, None)
            if tracked is not None:
                tracked.entry_durable = False
                self._files[dst] = tracked

    def getsize(self, path: str) -> int:
        with self._lock:
            return self._inner.getsize(path)
