"""Metadata is evidence (issue 12 section 2; docs/format.md 8.14): verify compares a
sealed call's index entry and OPEN record with its sealed manifest, and replays its
LIFECYCLE records from the seal (each link and leaf), so an edit of any of them is
named with the field and both values, even when the record's CRC was recomputed
and the index rebuilt from the segments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from crc32c import crc32c

from callvault.lifecycle.tags import retag
from callvault.store import records as rec
from callvault.store.index import CallEntry, Index, call_key
from callvault.store.segment import RecordRef, SegmentReader
from callvault.vault import Problem, Vault

TENANT = "acme"
NOW = 1_800_000_000_000_000
ROOT = {"name": "root", "role": "admin", "tenant": None, "via": "test"}


def _sealed(v: Vault, call_id: str, **meta: object) -> None:
    w = v.open_call(call_id, tenant=TENANT, start_us=NOW - 10**6, **meta)  # type: ignore[arg-type]
    w.append(0, 0, np.full(3, 7, dtype=np.int32), bytes(range(21))).result()
    w.seal(frames=3, end_us=NOW, summary={})


def build(data: Path) -> None:
    """Call c1 (agent ann, tag a, extra crm=42) with three tag changes (+x, +y, +z);
    call c2 untouched."""
    with Vault.open(data) as v:
        _sealed(
            v,
            "c1",
            agent="ann",
            skill_group="sales",
            tags=["a"],
            extra={"crm": "42"},
            customer_number="+15551234567",
        )
        _sealed(v, "c2", agent="bob")
        for t in ("x", "y", "z"):
            retag(v, "c1", tenant=TENANT, add=[t], by=ROOT, reason="test", policy=None)
        assert v.verify_all() == []


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("pristine") / "data"
    build(data)
    return data


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def scan(data: Path) -> list[tuple[RecordRef, int, bytes]]:
    with SegmentReader(data / "segments") as r:
        return list(r.scan())


def rewrite(data: Path, ref: RecordRef, body: bytes) -> None:
    """Replace a record's body in its segment (same length) and recompute its CRC-32C:
    what someone editing the files would do so that no checksum complains."""
    path = data / "segments" / f"{ref.segment:016x}.seg"
    raw = bytearray(path.read_bytes())
    assert len(body) == ref.length - 12
    tail = bytes(raw[ref.offset + 4 : ref.offset + 12])
    raw[ref.offset : ref.offset + ref.length] = (
        crc32c(body, crc32c(tail)).to_bytes(4, "little") + tail + body
    )
    path.write_bytes(raw)


def edit_record(data: Path, rtype: int, nth: int, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in the ``nth`` record of type ``rtype``
    of call c1."""
    found = [
        (ref, body)
        for ref, t, body in scan(data)
        if t == rtype and rec.parse(t, body).call_id == "c1"
    ]
    ref, body = found[nth]
    if rtype == rec.LIFECYCLE:  # the change's "set", not its "detail"
        at = body.index(b'"set":')
        edited = body[:at] + body[at:].replace(old, new)
    else:
        edited = body.replace(old, new)
    assert len(edited) == len(body) and edited != body
    rewrite(data, ref, edited)


def problems(data: Path, *, reindex: bool = False) -> list[str]:
    with Vault.open(data, rebuild_index=reindex) as v:
        return [str(p) for p in v.verify_all()]


def test_the_pristine_vault_verifies_and_shows_the_chain(pristine: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    with Vault.open(data, rebuild_index=True) as v:  # reindex gives the same entry
        e = v.get_call("c1", tenant=TENANT)
        assert e.tags == ["a", "x", "y", "z"] and e.lifecycle_count == 3
        assert len(e.lifecycle_refs) == 3 and e.open_ref is not None
        assert v.verify_all() == []
    with Vault.open(pristine) as v:
        before = v.get_call("c1", tenant=TENANT)
    assert e == before


def test_an_edited_open_record_with_its_crc_fixed_then_reindexed_is_named(data: Path) -> None:
    edit_record(data, rec.OPEN, 0, b'"agent":"ann"', b'"agent":"eve"')
    # before a reindex: the OPEN record disagrees with the seal
    found = problems(data)
    assert found == ['call c1: agent: the OPEN record says "eve", the seal says "ann"']
    # a reindex takes the edited record into the entry: the index disagrees too
    found = problems(data, reindex=True)
    with Vault.open(data) as v:
        assert v.get_call("c1", tenant=TENANT).agent == "eve"  # what ls would show
    assert 'call c1: agent: the index says "eve", the seal says "ann"' in found
    assert 'call c1: agent: the OPEN record says "eve", the seal says "ann"' in found
    assert all(p.startswith("call c1:") for p in found)


def test_an_edited_extra_in_the_open_record_is_named(data: Path) -> None:
    edit_record(data, rec.OPEN, 0, b'"crm":"42"', b'"crm":"43"')
    found = problems(data, reindex=True)
    assert 'call c1: extra: the index says {"crm": "43"}, the seal says {"crm": "42"}' in found


def test_an_edited_tag_in_the_open_record_is_named(data: Path) -> None:
    edit_record(data, rec.OPEN, 0, b'"tags":["a"]', b'"tags":["b"]')
    found = problems(data, reindex=True)
    assert 'call c1: tags: the OPEN record says ["b"], the seal says ["a"]' in found


def test_an_edited_lifecycle_record_is_named(data: Path) -> None:
    # the last change: its set (the tag list) and thus its link and leaf
    edit_record(data, rec.LIFECYCLE, 2, b'"z"]', b'"q"]')
    found = problems(data)
    assert (
        'call c1: tags: the index says ["a", "x", "y", "z"], the seal and lifecycle '
        'chain says ["a", "x", "y", "q"]'
    ) in found
    assert "call c1: lifecycle record 3 is not in the Merkle log" in found
    assert any(p.startswith("call c1: lifecycle_head: the index says") for p in found)


def test_an_edited_earlier_lifecycle_record_breaks_the_chain(data: Path) -> None:
    edit_record(data, rec.LIFECYCLE, 0, b'"x"]', b'"q"]')
    found = problems(data)
    assert "call c1: lifecycle record 1 is not in the Merkle log" in found
    assert any(
        p.startswith("call c1: lifecycle record 2 does not follow the lifecycle chain")
        for p in found
    )
    # reindexed: the record after it no longer follows (reported, never applied)
    found = problems(data, reindex=True)
    assert any("lifecycle record 2 of call c1" in p for p in found)


def test_an_edited_last_lifecycle_record_reindexed_leaves_its_leaf_unclaimed(
    data: Path,
) -> None:
    with Vault.open(data) as v:
        leaf = v.get_call("c1", tenant=TENANT).lifecycle_leaves[-1]
    edit_record(data, rec.LIFECYCLE, 2, b'"z"]', b'"q"]')
    with Vault.open(data, rebuild_index=True) as v:
        # the index now holds the edited record, under a new leaf: the original leaf
        # is claimed by nothing, which `callvault audit verify` names (8.12)
        e = v.get_call("c1", tenant=TENANT)
        assert e.tags == ["a", "x", "y", "q"]
        assert leaf not in v.index.log_leaves() and e.lifecycle_leaves[-1] != leaf


def test_a_removed_lifecycle_record_is_named(data: Path) -> None:
    ref = [r for r, t, _ in scan(data) if t == rec.LIFECYCLE][1]
    path = data / "segments" / f"{ref.segment:016x}.seg"
    raw = bytearray(path.read_bytes())
    del raw[ref.offset : ref.offset + ref.length]
    path.write_bytes(raw)
    found = problems(data)
    assert any(p.startswith("call c1: lifecycle record 2 cannot be read") for p in found)
    found = problems(data, reindex=True)  # record 3 no longer follows: a replay, named
    assert any(
        "lifecycle record 3 of call c1 where record 2" in p and p.startswith("segments:")
        for p in found
    )


def edit_entry(data: Path, **changes: object) -> None:
    ix = Index(data / "index")
    try:
        e = ix.get_call(TENANT, "c1")
        assert e is not None
        for k, val in changes.items():
            setattr(e, k, val)
        b = ix.batch()
        b._wb.put(call_key(TENANT, "c1"), e.pack(), ix.cf("calls"))
        ix.write(b)
    finally:
        ix.close()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"agent": "mallory"}, 'call c1: agent: the index says "mallory", the seal says "ann"'),
        ({"skill_group": "x"}, 'call c1: skill_group: the index says "x", the seal says "sales"'),
        (
            {"tags": ["a", "x"]},
            'call c1: tags: the index says ["a", "x"], the seal and lifecycle chain says '
            '["a", "x", "y", "z"]',
        ),
        (
            {"retention": {"until_us": 1, "rule": "r", "mode": "default", "set_us": 1}},
            'call c1: retention: the index says {"mode": "default", "rule": "r", "set_us": 1, '
            '"until_us": 1}, the seal and lifecycle chain says null',
        ),
        (
            {"holds": {"CASE-1": {"placed_us": 1}}},
            'call c1: holds: the index says {"CASE-1": {"placed_us": 1}}, the seal and '
            "lifecycle chain says {}",
        ),
        ({"extra": {}}, 'call c1: extra: the index says {}, the seal says {"crm": "42"}'),
    ],
)
def test_an_index_entry_edited_directly_is_named(
    data: Path, changes: dict[str, object], expected: str
) -> None:
    edit_entry(data, **changes)
    assert problems(data) == [expected]


def test_an_index_entry_with_a_lifecycle_record_dropped_is_named(data: Path) -> None:
    with Vault.open(data) as v:
        e = v.get_call("c1", tenant=TENANT)
    edit_entry(data, lifecycle_refs=e.lifecycle_refs[:2])
    found = problems(data)
    assert len(found) == 1 and "counts 3 lifecycle record(s) but keeps 2 place(s)" in found[0]


def test_a_version_1_manifest_checks_the_fields_it_covers(tmp_path: Path) -> None:
    """A call sealed before manifest version 2 (extra not sealed): its v1 fields are
    still compared; its extra cannot be, and verify does not invent a problem."""
    from callvault.vault.verify import not_sealed, sealed_fields

    m = {"version": 1, "agent": "ann", "tags": ["a"]}
    assert "extra" not in sealed_fields(m) and not_sealed(m) == [
        "extra",
        "recording_id",
        "decision",
    ]
    assert "extra" in sealed_fields({"version": 2}) and not_sealed({"version": 2}) == []


def test_reclaim_repoints_the_open_and_lifecycle_records(tmp_path: Path) -> None:
    """A reclaim moves the OPEN and LIFECYCLE records of a call with the rest: the
    index follows them (reclaim._repoint) and verify still finds them."""
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=2048) as v:
        _sealed(v, "c1", agent="ann", tags=["a"])
        w = v.open_call("big", tenant=TENANT, start_us=NOW)
        for i in range(40):
            w.append(0, i * 3, np.full(3, 7, dtype=np.int32), bytes(21)).result()
        w.seal(frames=120, end_us=NOW + 10**6, summary={})
        retag(v, "c1", tenant=TENANT, add=["x"], by=ROOT, policy=None)
        v.erase("big", tenant=TENANT, reason="test")
        before = v.get_call("c1", tenant=TENANT)
        r = v.reclaim(threshold=0.01)
        assert r.bytes_freed > 0
        after = v.get_call("c1", tenant=TENANT)
        assert (after.open_ref, after.lifecycle_refs) != (before.open_ref, before.lifecycle_refs)
        assert v.verify_call("c1", tenant=TENANT) == []
    with Vault.open(data, rebuild_index=True) as v:
        assert v.verify_all() == []


def test_problem_shape() -> None:
    assert str(Problem("call c1", None, "agent: x")) == "call c1: agent: x"
    assert json.loads(CallEntry("t", "c", 0).pack())["lifecycle_refs"] == []


def test_a_vault_sealed_with_manifest_version_1_verifies_and_says_what_is_not_sealed(
    tmp_path: Path,
) -> None:
    """A vault written before manifest version 2 (tests/vault/data, commit 909f696):
    verify passes on the fields version 1 covers, before and after a reindex (which
    records the OPEN record's place: then compared too), `verify CALL` notes what is
    not sealed, `info` shows the version, and its call can be tagged."""
    import subprocess
    import sys
    import tarfile

    with tarfile.open(Path(__file__).parent / "data" / "vault-909f696.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "vault"
    with Vault.open(data) as v:
        assert v.manifest("c1")["version"] == 1
        assert v.verify_all() == []
    with Vault.open(data, rebuild_index=True) as v:
        assert v.get_call("c1").open_ref is not None
        assert v.verify_all() == []
        retag(v, "c1", add=["complaint"], by=ROOT, reason="r", policy=None)
        assert v.verify_all() == []
    cli = [sys.executable, "-m", "callvault.cli", "--data", str(data)]
    p = subprocess.run([*cli, "verify", "c1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (
        "note: call c1: extra, recording_id and decision not sealed (manifest version 1)"
        in p.stdout
    )
    p = subprocess.run([*cli, "info", "c1", "--json"], capture_output=True, text=True, timeout=120)
    shown = json.loads(p.stdout)
    assert shown["manifest_version"] == 1 and shown["not_sealed"] == [
        "extra",
        "recording_id",
        "decision",
    ]
    assert shown["lifecycle_changes"] == 1 and "complaint" in shown["tags"]
