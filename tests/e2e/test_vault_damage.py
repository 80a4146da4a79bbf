"""A vault when things go wrong, through the real `callvault` command: a lost key
file, a damaged index, RocksDB's info logs, read-only access (issue 9, section 0)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from callvault.ids import MAX_ERASE_REASON_BYTES, MAX_TAGS
from callvault.media import sample
from callvault.store.index import LOG_FILES
from tests.servers import CLI, run_cli, start_server


def cv(data: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("--data", str(data), *args, ok=ok)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vault with two sealed calls, never touched by the tests (they copy it)."""
    tmp = tmp_path_factory.mktemp("damage")
    sample.demo_capture(tmp / "call.pcap", seconds=2.0)
    data = tmp / "data"
    for cid in ("d1", "d2"):
        cv(data, "import", "--call-id", cid, str(tmp / "call.pcap"))
    return data


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(pristine, d)
    return d


def calls(data: Path) -> list[tuple[str, str, int, float]]:
    rows = json.loads(cv(data, "ls", "--json").stdout)
    return [(r["call_id"], r["state"], r["start_us"], r["seconds"]) for r in rows]


def refused(p: subprocess.CompletedProcess[str]) -> str:
    """The one-sentence error of a refused command (never a traceback)."""
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    return p.stderr


def test_missing_key_file_is_an_error_never_a_new_key(data: Path, tmp_path: Path) -> None:
    before = calls(data)
    kek = data / "keys" / "kek"
    saved = tmp_path / "kek.backup"
    shutil.copy2(kek, saved)
    kek.unlink()
    for verb in (("ls",), ("info", "d1"), ("import", "--call-id", "d3", str(saved))):
        err = refused(cv(data, *verb, ok=False))
        assert f"key file missing: {kek}" in err
        assert "restore it from your backup" in err and "2 stored call(s)" in err
        assert not kek.exists()  # no new key was made
    # restored from the backup: every call reads again
    shutil.copy2(saved, kek)
    assert calls(data) == before
    cv(data, "export", "d1", "-o", str(tmp_path / "d1.wav"))
    assert (tmp_path / "d1.wav").stat().st_size > 44


def test_unreadable_key_file_is_an_error(data: Path) -> None:
    kek = data / "keys" / "kek"
    kek.write_bytes(b"not a key file")
    os.chmod(kek, 0o600)
    err = refused(cv(data, "ls", ok=False))
    assert str(kek) in err and "restore it from your backup" in err
    assert kek.read_bytes() == b"not a key file"


def test_a_new_vault_makes_its_key(tmp_path: Path, pristine: Path) -> None:
    data = tmp_path / "new"
    pcap = pristine.parent / "call.pcap"
    cv(data, "import", "--call-id", "n1", str(pcap))
    assert (data / "keys" / "kek").exists()
    assert [c[0] for c in calls(data)] == ["n1"]


def _sst(data: Path) -> Path:
    return sorted((data / "index").glob("*.sst"))[0]


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_index_is_refused_with_a_sentence_and_reindex_repairs_it(
    data: Path, pristine: Path, damage: str
) -> None:
    before = calls(data)
    sst = _sst(data)
    if damage == "delete":
        sst.unlink()
    else:
        os.truncate(sst, sst.stat().st_size // 2)
    for argv in (
        ("--data", str(data), "ls"),
        ("serve", "--data", str(data), "--listen", "127.0.0.1:0"),
    ):
        err = refused(run_cli(*argv, ok=False))
        assert "index" in err and "is damaged" in err
        assert f"callvault --data {data} reindex" in err
    out = cv(data, "reindex").stdout
    assert "index rebuilt from the segments" in out
    assert calls(data) == before
    assert "OK" in cv(data, "verify", "--all").stdout
    # the damaged index is kept aside, dated; no half-built index is left
    backups = list(data.glob("index.backup-*"))
    assert len(backups) == 1 and not (data / "index.new").exists()
    # and the rebuilt vault records again
    cv(data, "import", "--call-id", "d3", str(pristine.parent / "call.pcap"))
    assert [c[0] for c in calls(data)] == ["d1", "d2", "d3"]


def test_rocksdb_info_logs_are_bounded(data: Path) -> None:
    for _ in range(20):
        cv(data, "ls")
    logs = [p.name for p in (data / "index").iterdir() if p.name.startswith("LOG")]
    assert 1 <= len(logs) <= LOG_FILES, logs


def _no_writes() -> None:
    """A full disk, as far as this process can tell: no file may grow past 0 bytes
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write fails with EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _files(data: Path) -> dict[str, int]:
    return {str(p.relative_to(data)): p.stat().st_size for p in data.rglob("*") if p.is_file()}


def test_read_verbs_answer_on_a_full_disk(data: Path) -> None:
    before = calls(data)
    files = _files(data)
    for verb in (("ls", "--json"), ("info", "d1"), ("verify", "--all")):
        p = subprocess.run(
            [*CLI, "--data", str(data), *verb],
            capture_output=True,
            text=True,
            preexec_fn=_no_writes,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        if verb[0] == "ls":
            assert [r["call_id"] for r in json.loads(p.stdout)] == ["d1", "d2"]
        if verb[0] == "verify":
            assert "OK" in p.stdout
    # a verb that writes is refused with a sentence
    p = subprocess.run(
        [*CLI, "--data", str(data), "erase", "d1", "--reason", "test"],
        capture_output=True,
        text=True,
        preexec_fn=_no_writes,
        timeout=300,
    )
    assert "cannot be opened" in refused(p)
    # nothing was created and nothing grew (rocksdict's own rocksdict-config.json may be
    # emptied by the failed read-write attempt: it holds no data of ours)
    after = _files(data)
    assert set(after) == set(files)
    assert all(after[k] <= files[k] for k in files)
    assert calls(data) == before


def test_read_verbs_work_while_a_server_holds_the_vault(data: Path, tmp_path: Path) -> None:
    before = calls(data)
    server = start_server(data, log_dir=tmp_path)
    try:
        assert calls(data) == before
        assert "d1" in cv(data, "info", "d1").stdout
        cv(data, "export", "d1", "-o", str(tmp_path / "d1.wav"))
        assert (tmp_path / "d1.wav").stat().st_size > 44
        assert "OK" in cv(data, "verify", "--all").stdout
        err = refused(cv(data, "erase", "d1", "--reason", "test", ok=False))
        assert "in use by a running server" in err and "--server" in err
        # nothing the read-only opens did disturbed the server
        assert server.alive()
    finally:
        assert server.stop() == 0
    assert calls(data) == before


def test_metadata_bounds_locally_and_through_the_server(data: Path, pristine: Path) -> None:
    pcap = str(pristine.parent / "call.pcap")
    tags = "tags=" + ",".join(f"t{i}" for i in range(MAX_TAGS + 1))
    err = refused(cv(data, "import", "--call-id", "b1", "--meta", tags, pcap, ok=False))
    assert f"at most {MAX_TAGS}" in err
    reason = "r" * (MAX_ERASE_REASON_BYTES + 1)
    err = refused(cv(data, "erase", "d1", "--reason", reason, ok=False))
    assert f"at most {MAX_ERASE_REASON_BYTES}" in err
    server = start_server(data, log_dir=data.parent)
    try:
        addr = ("--server", server.address)
        err = refused(run_cli(*addr, "import", "--call-id", "b1", "--meta", tags, pcap, ok=False))
        assert f"at most {MAX_TAGS}" in err
        err = refused(run_cli(*addr, "erase", "d1", "--reason", reason, ok=False))
        assert f"at most {MAX_ERASE_REASON_BYTES}" in err
    finally:
        assert server.stop() == 0
    assert [c[:2] for c in calls(data)] == [("d1", "sealed"), ("d2", "sealed")]
