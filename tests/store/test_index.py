"""callvault.store.index: the RocksDB index (real RocksDB in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callvault.store.index import U32, CallEntry, Index, RecordEntry


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


def test_nul_in_keys_is_refused(index: Index) -> None:
    b = index.batch()
    with pytest.raises(ValueError, match="without NUL"):
        b.put_call(_call("acme", "bad\x00id", 1))


def test_tenants_listed_once_each(index: Index) -> None:
    assert index.tenants() == ["acme", "acmex"]
