"""The file layer: the real file system and the fault-injecting FaultyFS."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from callvault.store.fs import REAL_FS, FaultyFS


def test_real_fs_appends_reads_truncates(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    f = REAL_FS.create(path)
    assert f.write(b"hello ") == 6 and f.write(b"world") == 5
    f.fsync()
    assert f.pread(5, 6) == b"world" and f.pread(100, 6) == b"world" and f.size() == 11
    f.truncate(5)
    assert f.write(b"!") == 1  # O_APPEND: after the truncation point
    f.close()
    assert Path(path).read_bytes() == b"hello!"
    with pytest.raises(FileExistsError):
        REAL_FS.create(path)
    REAL_FS.fsync_dir(str(tmp_path))
    assert REAL_FS.listdir(str(tmp_path)) == ["f"] and REAL_FS.getsize(path) == 6


def test_crash_drops_unsynced_bytes(tmp_path: Path) -> None:
    fs = FaultyFS()
    path = str(tmp_path / "f")
    f = fs.create(path)
    f.write(b"durable")
    f.fsync()
    fs.fsync_dir(str(tmp_path))
    f.write(b" lost")
    assert fs.synced_length(path) == 7
    fs.crash()
    assert Path(path).read_bytes() == b"durable"
    with pytest.raises(OSError) as info:
        f.write(b"after")
    assert info.value.errno == errno.EIO
    assert Path(path).read_bytes() == b"durable"


def test_crash_removes_files_whose_creation_was_not_synced(tmp_path: Path) -> None:
    fs = FaultyFS()
    kept = fs.create(str(tmp_path / "kept"))
    kept.write(b"x")
    kept.fsync()
    fs.fsync_dir(str(tmp_path))
    lost = fs.create(str(tmp_path / "lost"))
    lost.write(b"y")
    lost.fsync()  # data synced, directory entry not
    fs.crash()
    assert sorted(os.listdir(tmp_path)) == ["kept"]


def test_existing_files_count_as_durable(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.write_bytes(b"before")
    fs = FaultyFS()
    f = fs.open_append(str(path))
    f.write(b" after")
    fs.crash()
    assert path.read_bytes() == b"before"


def test_fail_fsync_nth_once_and_persistent(tmp_path: Path) -> None:
    fs = FaultyFS()
    f = fs.create(str(tmp_path / "f"))
    fs.fail_fsync(nth=2, persist=False)
    f.fsync()
    with pytest.raises(OSError, match="injected"):
        f.fsync()
    f.fsync()
    fs.fail_fsync(nth=1)
    for _ in range(3):
        with pytest.raises(OSError) as info:
            f.fsync()
        assert info.value.errno == errno.EIO
    assert fs.fsync_count == 6


def test_short_write_and_write_error(tmp_path: Path) -> None:
    fs = FaultyFS()
    f = fs.create(str(tmp_path / "f"))
    fs.short_write(keep=3)
    assert f.write(b"abcdef") == 3
    assert f.write(b"def") == 3
    fs.fail_write()
    with pytest.raises(OSError) as info:
        f.write(b"zz")
    assert info.value.errno == errno.ENOSPC
    assert f.pread(100, 0) == b"abcdef" and fs.write_count == 3
