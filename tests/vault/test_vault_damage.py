"""The vault when things go wrong (issue 9, section 0), through its API on real files:
a segment writer that fails for good and is reopened, an erasure that fails, read-only
opens, an index rebuild a crash interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from callvault.errors import InputError
from callvault.media import sample
from callvault.store.index import IndexUnreadable
from callvault.vault import Vault, VaultBusy, VaultError


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=2.0)
    return p


@pytest.fixture
def data(tmp_path: Path, capture: Path) -> Path:
    d = tmp_path / "data"
    with Vault.open(d) as v:
        v.import_call("c1", [str(capture)], tags=["a"])
        v.import_call("c2", [str(capture)])
    return d


def _tree(d: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in d.rglob("*")
        if p.is_file()
    }


# A child process: RLIMIT_FSIZE (a per-file size limit, enforced by the kernel on real
# files) just above the largest segment makes the next segment write fail with EFBIG,
# as a full disk would; lifting it is "space was freed".
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from callvault.vault import Vault, VaultError
    data, pcap = Path(sys.argv[1]), sys.argv[2]
    out = {}
    with Vault.open(data) as v:
        limit = max(p.stat().st_size for p in (data / "segments").iterdir()) + 200
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        out["writer_error_before"] = v.writer_error
        try:
            v.erase("c1", reason="r" * 1000)
            out["erase"] = "applied"
        except VaultError as e:
            out["erase"] = str(e)
        out["writer_error"] = v.writer_error
        try:
            v.import_call("c3", [pcap])
            out["import_while_full"] = "stored"
        except Exception as e:
            out["import_while_full"] = type(e).__name__
        out["reopen_while_full"] = v.reopen_writer()
        out["writer_error_while_full"] = v.writer_error
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out["reopen"] = v.reopen_writer()
        out["writer_error_after"] = v.writer_error
        v.import_call("c3", [pcap])  # the id the failed import tried is free
        v.erase("c2", reason="asked")
        out["states"] = {c: v.get_call(c).state for c in ("c1", "c2", "c3")}
    print(json.dumps(out))
    """
)


def test_failed_erase_is_not_applied_and_the_writer_reopens(data: Path, capture: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(capture)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["writer_error_before"] is None
    assert out["erase"].startswith("erasing call c1 failed, nothing was applied")
    assert "File too large" in out["writer_error"]
    assert out["import_while_full"] != "stored"
    assert out["reopen_while_full"] is False and "File too large" in out["writer_error_while_full"]
    assert out["reopen"] is True and out["writer_error_after"] is None
    assert out["states"] == {"c1": "sealed", "c2": "erased", "c3": "sealed"}
    # a later open (recovery) does not apply the failed erasure either
    with Vault.open(data) as v:
        assert v.get_call("c1").state == "sealed"
        assert [c.call_id for c in v.list_calls()] == ["c1", "c2", "c3"]
        assert v.verify_all() == []
        assert v.export("c1", data.parent / "c1.wav") > 0  # its key is still there


def test_read_only_open_writes_nothing_and_refuses_writes(data: Path) -> None:
    # torn tails, as a crash (or a writer in the middle of an append) leaves them: a
    # read-only open must not cut them (another process may be writing there)
    for f in (data / "log" / "tree", max((data / "segments").glob("*.seg"))):
        with open(f, "ab") as out:
            out.write(b"\x01torn")
    before = _tree(data)
    with Vault.open(data, read_only=True) as v:
        assert [c.call_id for c in v.list_calls()] == ["c1", "c2"]
        assert v.verify_all() == []
        with pytest.raises(VaultError, match="read-only"):
            v.open_call("c9")
        with pytest.raises(VaultError, match="read-only"):
            v.erase("c1", reason="x")
    assert _tree(data) == before


def test_read_only_open_beside_a_writer(data: Path, capture: Path) -> None:
    with Vault.open(data) as writer:
        with pytest.raises(VaultBusy):
            Vault.open(data)
        with Vault.open(data, read_only=True) as reader:
            assert [c.call_id for c in reader.list_calls()] == ["c1", "c2"]
        writer.import_call("c3", [str(capture)])
        with Vault.open(data, read_only=True) as reader:  # a new open sees the new call
            assert [c.call_id for c in reader.list_calls()] == ["c1", "c2", "c3"]


def test_no_vault_is_created_unless_asked(tmp_path: Path) -> None:
    for kw in ({"create": False}, {"read_only": True}):
        with pytest.raises(VaultError, match="no vault at"):
            Vault.open(tmp_path / "typo", **kw)  # type: ignore[arg-type]
        assert not (tmp_path / "typo").exists()


def test_missing_key_file_is_refused_and_not_replaced(data: Path) -> None:
    (data / "keys" / "kek").unlink()
    with pytest.raises(VaultError, match=r"key file missing: .*restore it .* 2 stored call"):
        Vault.open(data)
    with pytest.raises(VaultError, match="key file missing"):
        Vault.open(data, read_only=True)
    assert not (data / "keys" / "kek").exists()


def test_damaged_index_open_and_rebuild(data: Path) -> None:
    sst = sorted((data / "index").glob("*.sst"))[0]
    sst.unlink()
    with pytest.raises(IndexUnreadable, match="reindex") as info:
        Vault.open(data)
    assert info.value.damaged
    with Vault.open(data, rebuild_index=True) as v:
        assert v.report.reindexed > 0
        assert [(c.call_id, c.state, c.tags) for c in v.list_calls()] == [
            ("c1", "sealed", ["a"]),
            ("c2", "sealed", []),
        ]
    assert len(list(data.glob("index.backup-*"))) == 1
    with Vault.open(data) as v:
        assert v.verify_all() == []


def test_an_interrupted_index_swap_is_settled_on_open(data: Path) -> None:
    # a rebuild cut before its first rename: index.new is incomplete, index is whole
    (data / "index.new").mkdir()
    (data / "index.new" / "CURRENT").write_text("garbage")
    with Vault.open(data) as v:
        assert len(v.list_calls()) == 2
    assert not (data / "index.new").exists()
    # a rebuild cut between its renames: index.new is the complete new index
    os.rename(data / "index", data / "index.new")
    with Vault.open(data) as v:
        assert len(v.list_calls()) == 2
    assert (data / "index").is_dir() and not (data / "index.new").exists()


def test_online_reindex_replaces_the_index(data: Path, capture: Path) -> None:
    with Vault.open(data) as v:
        n = v.reindex()
        assert n > 0
        assert [c.call_id for c in v.list_calls()] == ["c1", "c2"]
        v.import_call("c3", [str(capture)])  # the writer indexes into the new index
        assert [c.call_id for c in v.list_calls()] == ["c1", "c2", "c3"]
    assert not list(data.glob("index.old-*")) and not (data / "index.new").exists()


def test_metadata_and_reason_bounds(data: Path) -> None:
    from callvault import ids

    big: dict[str, Any] = {
        "tags": [f"t{i}" for i in range(ids.MAX_TAGS + 1)],
        "agent": "a" * (ids.MAX_FIELD_BYTES + 1),
        "customer_number": "5" * (ids.MAX_CUSTOMER_NUMBER_BYTES + 1),
        "extra": {f"k{i}": "v" for i in range(ids.MAX_EXTRA_KEYS + 1)},
    }
    with Vault.open(data) as v:
        for key, value in big.items():
            with pytest.raises(InputError, match="at most"):
                v.open_call("b1", **{key: value})
        with pytest.raises(InputError, match="at most"):
            v.open_call("b1", extra={"notes": "x" * ids.MAX_EXTRA_VALUE_BYTES})
        for bad in (["ok", ""], ["a\x00b"]):
            with pytest.raises(InputError, match="tag"):
                v.open_call("b1", tags=bad)
        with pytest.raises(InputError, match="NUL"):
            v.open_call("b1", skill_group="s\x00")
        # at the bounds: accepted
        w = v.open_call(
            "b1",
            tags=["t" * ids.MAX_TAG_BYTES] * ids.MAX_TAGS,
            agent="a" * ids.MAX_FIELD_BYTES,
            extra={f"k{i}": "v" for i in range(ids.MAX_EXTRA_KEYS)},
        )
        w.seal(frames=0)
        with pytest.raises(InputError, match=f"at most {ids.MAX_ERASE_REASON_BYTES}"):
            v.erase("c1", reason="r" * (ids.MAX_ERASE_REASON_BYTES + 1))
        assert v.get_call("c1").state == "sealed"
        v.erase("c1", reason="r" * ids.MAX_ERASE_REASON_BYTES)
        assert v.get_call("c1").state == "erased"


def test_missing_index_is_refused_not_recreated_empty(data: Path) -> None:
    import shutil

    shutil.rmtree(data / "index")
    with pytest.raises(IndexUnreadable, match="is missing.*reindex"):
        Vault.open(data)
    assert not (data / "index").exists()
    with Vault.open(data, rebuild_index=True) as v:
        assert [c.call_id for c in v.list_calls()] == ["c1", "c2"]


def test_a_failed_open_call_leaves_the_id_free(data: Path) -> None:
    with Vault.open(data) as v:
        v._writer.close()  # a writer that refuses every append, as a failed one does
        for _ in range(2):  # the second attempt is refused for the same reason, not "exists"
            with pytest.raises(Exception, match="closed"):
                v.open_call("again")
        assert ("default", "again") not in v._open
