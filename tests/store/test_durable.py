"""callvault.durable.write_atomic, the one atomic file writer (the key file, the
calls' key files, the checkpoint files, the server's port file)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from callvault.durable import write_atomic


def test_writes_whole_with_exact_mode_and_no_temp_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    old = os.umask(0o077)
    try:
        write_atomic(p, b"one", 0o640)
    finally:
        os.umask(old)
    assert p.read_bytes() == b"one" and stat.S_IMODE(p.stat().st_mode) == 0o640
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f"]


def test_a_temp_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    p = tmp_path / "f"
    (tmp_path / "f.tmp").write_bytes(b"half of an earlier write")
    write_atomic(p, b"new")
    assert p.read_bytes() == b"new" and not (tmp_path / "f.tmp").exists()


def test_a_symlinked_temp_name_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "f.tmp").symlink_to(target)
    write_atomic(tmp_path / "f", b"new")
    assert target.read_bytes() == b"keep" and (tmp_path / "f").read_bytes() == b"new"
    assert not (tmp_path / "f").is_symlink()


def test_exclusive_refuses_an_existing_file_and_cleans_up(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        write_atomic(p, b"second", exclusive=True)
    assert p.read_bytes() == b"first" and sorted(x.name for x in tmp_path.iterdir()) == ["f"]
