"""callvault.store.index: the RocksDB index (real RocksDB in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from callvault.store import index as index_mod
from callvault.store.index import FORMAT_VERSION, U32, CallEntry, Index, RecordEntry, call_key


def _call(tenant: str, call_id: str, start: int, **kw: object) -> CallEntry:
    return CallEntry(tenant=tenant, call_id=call_id, start_us=start, **kw)  # type: ignore[arg-type]


@pytest.fixture
def index(tmp_path: Path) -> Index:
    ix = Index(tmp_path / "index")
    b = ix.batch()
    b.put_call(_call("acme", "c1", 1_000, agent="ann", skill_group="billing", tags=["vip"]))
    b.put_call(_call("acme", "c2", 2_000, agent="bob", skill_group="billing"))
    b.put_call(_call("acme", "c3", 3_000, agent="ann", tags=["vip", "escalated"]))
    b.put_call(_call("acmex", "c4", 1_500, agent="ann", tags=["vip"]))
    ix.write(b)
    return ix


def test_call_round_trip(index: Index) -> None:
    e = index.get_call("acme", "c1")
    assert e is not None and e.agent == "ann" and e.tags == ["vip"] and e.start_us == 1_000
    assert index.get_call("acme", "nope") is None


def test_search_by_time_range(index: Index) -> None:
    assert [e.call_id for e in index.search("acme")] == ["c1", "c2", "c3"]
    assert [e.call_id for e in index.search("acme", since_us=1_500, until_us=3_000)] == ["c2"]


def test_search_by_agent_skill_and_tag(index: Index) -> None:
    assert [e.call_id for e in index.search("acme", agent="ann")] == ["c1", "c3"]
    assert [e.call_id for e in index.search("acme", skill_group="billing")] == ["c1", "c2"]
    assert [e.call_id for e in index.search("acme", tag="vip")] == ["c1", "c3"]
    assert [e.call_id for e in index.search("acme", tag="vip", agent="bob")] == []


def test_tenants_are_isolated_even_with_a_common_prefix(index: Index) -> None:
    assert [e.call_id for e in index.search("acmex", tag="vip")] == ["c4"]
    assert all(e.tenant == "acme" for e in index.search("acme", agent="ann"))


def test_postings_follow_metadata_changes(index: Index) -> None:
    old = index.get_call("acme", "c2")
    assert old is not None
    new = _call("acme", "c2", 2_000, agent="carol", skill_group="billing", tags=["late"])
    b = index.batch()
    b.put_call(new, previous=old)
    index.write(b)
    assert [e.call_id for e in index.search("acme", agent="bob")] == []
    assert [e.call_id for e in index.search("acme", agent="carol")] == ["c2"]
    assert [e.call_id for e in index.search("acme", tag="late")] == ["c2"]


def test_records_in_chain_order(index: Index) -> None:
    b = index.batch()
    for i in (2, 0, 1, 300):
        b.put_record("acme", "c1", i, RecordEntry(i % 2, 1, 50, 50 * i, 1, 32 + 100 * i, 90))
    b.put_record("acme", "c10", 0, RecordEntry(0, 1, 50, 0, 1, 0, 90))  # c1 is a prefix of c10
    index.write(b)
    got = list(index.records("acme", "c1"))
    assert [i for i, _ in got] == [0, 1, 2, 300]
    assert got[3][1] == RecordEntry(0, 1, 50, 15_000, 1, 30_032, 90)


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    ix = Index(tmp_path / "ix")
    b = ix.batch()
    b.put_call(_call("t", "c", 5))
    ix.write(b)
    ix.close()
    ix = Index(tmp_path / "ix")
    assert ix.get_call("t", "c") is not None


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    ix = Index(tmp_path / "ix")
    ix._db.put(b"meta/format", U32.pack(99))
    ix.close()
    with pytest.raises(ValueError, match="reindex"):
        Index(tmp_path / "ix")


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_older_index_is_read_and_marked_current(tmp_path: Path, version: int) -> None:
    """Entries of an older index version still load (version 2 entries have no
    recording_id or unsupported_codec); the marker moves to the current version so
    that a build that knows only the older one refuses the index (it could not read
    new entries)."""
    ix = Index(tmp_path / "ix")
    ix._db.put(b"meta/format", U32.pack(version))
    doc = json.loads(_call("t", "c", 5).pack())
    del doc["recording_id"], doc["unsupported_codec"]  # what version 2 wrote
    for k in ("storage", "transcode_ref", "transcode_log_index", "compact_next"):
        del doc[k]  # what version 3 (and before) wrote
    for k in V5_FIELDS:
        del doc[k]  # what version 4 (and before) wrote
    ix._views["calls"][call_key("t", "c")] = json.dumps(doc).encode()
    ix.close()
    ix = Index(tmp_path / "ix")
    e = ix.get_call("t", "c")
    assert e is not None and e.recording_id is None and e.unsupported_codec is None
    assert (e.storage, e.transcode_ref, e.transcode_log_index) == ("opus", None, -1)
    assert (e.decision, e.retention, e.holds, e.archive, e.local) == (None, None, {}, None, True)
    assert (e.lifecycle_count, e.lifecycle_head, e.lifecycle_leaves) == (0, "", [])
    assert (e.lifecycle_refs, e.open_ref, e.disposal) == ([], None, None)
    assert (e.pending_erase, e.subjects) == (None, {})
    raw = ix._db.get(b"meta/format")
    assert raw is not None and U32.unpack(raw)[0] == FORMAT_VERSION == 5
    ix.close()


V5_FIELDS = (
    "decision",
    "retention",
    "holds",
    "lifecycle_count",
    "lifecycle_head",
    "lifecycle_leaves",
    "lifecycle_refs",
    "open_ref",
    "archive",
    "local",
    "disposal",
    "pending_erase",
    "subjects",
)


def test_a_version_4_index_keeps_its_records_when_marked_5(tmp_path: Path) -> None:
    """From 4 only the marker moves: an erased call's records (none in a version 4
    index; planted here) are not migrated again (no dead bytes counted twice)."""
    ix = Index(tmp_path / "ix")
    e = _call("t", "gone", 5)
    e.state = "erased"
    b = ix.batch()
    b.put_call(e)
    b.put_record("t", "gone", 0, RecordEntry(0, 1, 10, 0, 7, 100, 40))
    ix.write(b)
    ix._db.put(b"meta/format", U32.pack(4))
    ix.close()
    ix = Index(tmp_path / "ix")
    assert len(list(ix.records("t", "gone"))) == 1 and ix.dead_bytes() == {}
    raw = ix._db.get(b"meta/format")
    assert raw is not None and U32.unpack(raw)[0] == 5
    ix.close()


def test_a_version_4_build_refuses_a_version_5_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix = Index(tmp_path / "ix")
    ix.write(_batch_with(ix, _call("t", "c", 5)))
    ix.close()
    monkeypatch.setattr(index_mod, "FORMAT_VERSION", 4)
    monkeypatch.setattr(index_mod, "READABLE_VERSIONS", (1, 2, 3, 4))
    with pytest.raises(ValueError, match="index format 5 is not 4: rebuild it with .*reindex"):
        Index(tmp_path / "ix")
    monkeypatch.undo()
    ix = Index(tmp_path / "ix")  # nothing was changed by the refusal
    assert ix.get_call("t", "c") is not None
    ix.close()


def _batch_with(ix: Index, e: CallEntry) -> Any:
    b = ix.batch()
    b.put_call(e)
    return b


def test_nul_in_keys_is_refused(index: Index) -> None:
    b = index.batch()
    with pytest.raises(ValueError, match="without NUL"):
        b.put_call(_call("acme", "bad\x00id", 1))


def test_tenants_listed_once_each(index: Index) -> None:
    assert index.tenants() == ["acme", "acmex"]


def test_vault_fields_round_trip_apart_from_extra(tmp_path: Path) -> None:
    ix = Index(tmp_path / "ix")
    e = _call(
        "t",
        "c",
        5,
        state="erased",
        seal="ab" * 32,
        extra={"crm": "42"},
        manifest_ref=(1, 320, 190),
        erased_us=9,
        erase_reason="retention",
        erase_log_index=3,
    )
    b = ix.batch()
    b.put_call(e)
    ix.write(b)
    got = ix.get_call("t", "c")
    assert got == e and got.extra == {"crm": "42"} and got.manifest_ref == (1, 320, 190)


def _old_packing(**doc: object) -> bytes:
    """A call entry as the previous version packed it: the vault's own values in extra."""
    base = {
        "tenant": "t",
        "call_id": "c",
        "start_us": 5,
        "direction": "",
        "agent": "ann",
        "skill_group": "",
        "tags": [],
        "legs": ["agent", "customer"],
        "customer_number_sealed": "",
        "wrapped_key": "",
        "state": "open",
        "records": 4,
        "chain_head": "00" * 32,
        "seal": "",
        "log_index": -1,
        "end_us": 0,
        "extra": {},
    }
    return json.dumps({**base, **doc}, sort_keys=True, separators=(",", ":")).encode()


def test_an_erased_entry_packed_the_old_way_loads_into_the_fields() -> None:
    raw = _old_packing(
        state="erased",
        seal="cd" * 32,
        log_index=0,
        end_us=7,
        extra={
            "crm": "42",
            "manifest_ref": [2, 64, 300],
            "erased_us": 11,
            "erase_reason": "retention",
            "erase_log_index": 1,
        },
    )
    e = CallEntry.unpack(raw)
    assert e.extra == {"crm": "42"}
    assert e.manifest_ref == (2, 64, 300)
    assert (e.erased_us, e.erase_reason, e.erase_log_index) == (11, "retention", 1)
    # packed again the new way, it reads back the same
    assert CallEntry.unpack(e.pack()) == e


def test_an_old_entry_keeps_the_users_extra_the_vault_did_not_write() -> None:
    # a sealed call: the vault had written only manifest_ref; the user's own keys
    # of the same names (strings, as every client sends them) stay theirs
    raw = _old_packing(
        state="sealed",
        seal="cd" * 32,
        extra={"manifest_ref": [2, 64, 300], "erase_reason": "none given", "erased_us": "x"},
    )
    e = CallEntry.unpack(raw)
    assert e.manifest_ref == (2, 64, 300)
    assert e.extra == {"erase_reason": "none given", "erased_us": "x"}
    assert (e.erased_us, e.erase_reason, e.erase_log_index) == (0, "", -1)
    # an open call: nothing was the vault's
    e = CallEntry.unpack(_old_packing(extra={"manifest_ref": "mine"}))
    assert e.extra == {"manifest_ref": "mine"} and e.manifest_ref is None
