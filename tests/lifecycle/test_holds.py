"""Legal holds in the library (callvault.lifecycle.holds) on a real vault: place,
request a release, approve it by another identity (the requester is refused),
erasure of a held call deferred and carried out at the release, holds on erased
calls refused, names checked, and the holds rebuilt from the segments by reindex."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callvault.errors import InputError
from callvault.lifecycle import holds
from callvault.media import sample
from callvault.vault import Vault
from callvault.vault.lifecycle import Retained

ALICE = holds.identity("alice", "legal", "t1", "token:1")
BOB = holds.identity("bob", "legal", "t1", "token:2")
ALICE_AGAIN = holds.identity("alice", "admin", "t1", "cert:alice")  # the same person
T0 = 1_800_000_000_000_000


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=1.0)
    return path


@pytest.fixture
def vault(tmp_path: Path, capture: Path) -> Iterator[Vault]:
    with Vault.open(tmp_path / "data") as v:
        for call_id in ("a", "b", "c"):
            v.import_call(call_id, [str(capture)], tenant="t1")
        v.clock = lambda: T0
        yield v


def test_place_request_approve_by_another(vault: Vault) -> None:
    o = holds.place(vault, "a", tenant="t1", name="CASE-17", reason="subpoena", by=ALICE)
    assert o.changed and o.note == "hold CASE-17 placed"
    e = vault.get_call("a", tenant="t1")
    assert e.holds == {"CASE-17": {"placed_us": T0, "by": ALICE, "reason": "subpoena"}}
    assert o.log_index == e.lifecycle_leaves[-1] and o.link == e.lifecycle_head
    assert vault.retained(e) is not None and "CASE-17" in str(vault.retained(e))
    # placing it again changes nothing, and says so
    again = holds.place(vault, "a", tenant="t1", name="CASE-17", reason="x", by=BOB)
    assert not again.changed and "already under hold CASE-17" in again.note
    assert vault.get_call("a", tenant="t1").lifecycle_count == 1
    # approving before any request: refused
    with pytest.raises(holds.DualControl, match="no release of hold CASE-17"):
        holds.approve_release(vault, "a", tenant="t1", name="CASE-17", by=BOB)
    r = holds.request_release(vault, "a", tenant="t1", name="CASE-17", reason="settled", by=ALICE)
    assert r.changed
    rel = vault.get_call("a", tenant="t1").holds["CASE-17"]["release"]
    assert rel == {"requested_us": T0, "by": ALICE, "reason": "settled"}
    # the requester (also under another role or credential) may not approve it
    for same in (ALICE, ALICE_AGAIN, None):
        with pytest.raises(holds.DualControl, match="requested by alice"):
            holds.approve_release(vault, "a", tenant="t1", name="CASE-17", by=same)
    assert "CASE-17" in vault.get_call("a", tenant="t1").holds
    # another identity approves
    done = holds.approve_release(vault, "a", tenant="t1", name="CASE-17", by=BOB)
    assert done.changed and not done.erased and done.note == "hold CASE-17 released"
    e = vault.get_call("a", tenant="t1")
    assert e.holds == {} and e.lifecycle_count == 3 and vault.retained(e) is None
    assert len(set(e.lifecycle_leaves)) == 3
    with pytest.raises(holds.HoldError, match="not under hold CASE-17"):
        holds.request_release(vault, "a", tenant="t1", name="CASE-17", reason="x", by=ALICE)


def test_other_tenant_same_name_is_another_identity() -> None:
    other = holds.identity("alice", "legal", "t2", "token:9")
    assert not holds.same_person(ALICE, other)
    assert holds.same_person(ALICE, ALICE_AGAIN)
    assert not holds.same_person(ALICE, None)


def test_erase_of_held_call_deferred_then_carried_out(vault: Vault) -> None:
    holds.place(vault, "b", tenant="t1", name="CASE-17", reason="subpoena", by=ALICE)
    holds.place(vault, "b", tenant="t1", name="HR-2", reason="grievance", by=ALICE)
    with pytest.raises(Retained):
        vault.erase("b", tenant="t1", reason="customer asked")
    res = holds.erase_or_defer(vault, "b", tenant="t1", reason="customer asked", by=BOB)
    assert not res.erased and res.message.startswith("deferred: held by CASE-17, HR-2")
    e = vault.get_call("b", tenant="t1")
    assert e.state == "sealed" and e.pending_erase == {
        "requested_us": T0,
        "by": BOB,
        "reason": "customer asked",
    }
    assert res.log_index == e.lifecycle_leaves[-1]
    again = holds.erase_or_defer(vault, "b", tenant="t1", reason="again", by=ALICE)
    assert not again.erased and "already requested by bob" in again.message
    assert vault.get_call("b", tenant="t1").lifecycle_count == 3
    # first release: another hold remains, the erasure waits
    holds.request_release(vault, "b", tenant="t1", name="CASE-17", reason="closed", by=ALICE)
    o = holds.approve_release(vault, "b", tenant="t1", name="CASE-17", by=BOB)
    assert not o.erased and "HR-2" in o.erase_pending
    assert vault.get_call("b", tenant="t1").state == "sealed"
    # last release: carried out in the same call, with the recorded reason
    holds.request_release(vault, "b", tenant="t1", name="HR-2", reason="done", by=BOB)
    o = holds.approve_release(vault, "b", tenant="t1", name="HR-2", by=ALICE)
    assert o.erased and "deferred erasure was carried out" in o.note
    e = vault.get_call("b", tenant="t1")
    assert e.state == "erased" and e.erase_reason == "customer asked"
    assert not vault.call_keys.path("t1", "b").exists()
    assert holds.carry_out_pending(vault, e) is None  # already done: nothing to do


def test_erase_not_held_erases_and_retention_alone_is_not_deferred(vault: Vault) -> None:
    res = holds.erase_or_defer(vault, "c", tenant="t1", reason="asked", by=BOB)
    assert res.erased and vault.get_call("c", tenant="t1").state == "erased"
    # a compliance retention (no hold): refused as before, nothing recorded
    vault.change(
        "a",
        tenant="t1",
        op="retention",
        changes={
            "retention": {"until_us": T0 + 10**6, "rule": "vip", "mode": "compliance", "set_us": T0}
        },
    )
    with pytest.raises(Retained, match="compliance retention"):
        holds.erase_or_defer(vault, "a", tenant="t1", reason="asked", by=BOB)
    assert vault.get_call("a", tenant="t1").pending_erase is None


def test_release_waits_for_retention_then_sweeper_carries_out(vault: Vault) -> None:
    until = T0 + 3_600_000_000
    vault.change(
        "a",
        tenant="t1",
        op="retention",
        changes={
            "retention": {"until_us": until, "rule": "vip", "mode": "compliance", "set_us": 1}
        },
    )
    holds.place(vault, "a", tenant="t1", name="CASE-17", reason="subpoena", by=ALICE)
    holds.erase_or_defer(vault, "a", tenant="t1", reason="asked", by=BOB)
    holds.request_release(vault, "a", tenant="t1", name="CASE-17", reason="closed", by=ALICE)
    o = holds.approve_release(vault, "a", tenant="t1", name="CASE-17", by=BOB)
    assert not o.erased and "compliance retention" in o.erase_pending
    e = vault.get_call("a", tenant="t1")
    assert e.state == "sealed" and e.pending_erase and not e.holds
    assert "compliance retention" in str(holds.carry_out_pending(vault, e))
    vault.clock = lambda: until + 1
    assert holds.carry_out_pending(vault, e) is None
    assert vault.get_call("a", tenant="t1").state == "erased"


def test_hold_on_erased_or_unknown_call_refused(vault: Vault) -> None:
    vault.erase("c", tenant="t1", reason="gone")
    with pytest.raises(holds.HoldError, match="call c is erased"):
        holds.place(vault, "c", tenant="t1", name="CASE-17", reason="late", by=ALICE)
    assert vault.get_call("c", tenant="t1").lifecycle_count == 0
    with pytest.raises(Exception, match="no call ghost"):
        holds.place(vault, "ghost", tenant="t1", name="CASE-17", reason="x", by=ALICE)


@pytest.mark.parametrize("name", ["", "x" * 65, "CASE 17", "CASE/17", "é", "a\x00b", "CASE-17\n"])
def test_names_validated(vault: Vault, name: str) -> None:
    with pytest.raises(InputError, match="hold name"):
        holds.place(vault, "a", tenant="t1", name=name, reason="r", by=ALICE)
    assert vault.get_call("a", tenant="t1").lifecycle_count == 0


def test_names_accepted_and_reason_required(vault: Vault) -> None:
    for name in ("x" * 64, "CASE-17", "lit:2026.114_b"):
        assert holds.place(vault, "a", tenant="t1", name=name, reason="r", by=ALICE).changed
    with pytest.raises(InputError, match="reason is required"):
        holds.place(vault, "b", tenant="t1", name="N", reason=" ", by=ALICE)


def test_tenant_erasure_refused_with_a_held_call(vault: Vault) -> None:
    holds.place(vault, "a", tenant="t1", name="CASE-17", reason="subpoena", by=ALICE)
    with pytest.raises(Exception, match="CASE-17|hold"):
        vault.erase_tenant("t1", reason="contract ended")
    assert vault.get_call("b", tenant="t1").state == "sealed"


def test_listing_and_counts(vault: Vault, capture: Path) -> None:
    vault.import_call("z", [str(capture)], tenant="t2")
    holds.place(vault, "a", tenant="t1", name="CASE-17", reason="s", by=ALICE)
    holds.place(vault, "b", tenant="t1", name="CASE-17", reason="s", by=ALICE)
    holds.place(vault, "a", tenant="t1", name="HR-2", reason="g", by=ALICE)
    holds.place(vault, "z", tenant="t2", name="CASE-17", reason="s", by=None)
    holds.request_release(vault, "b", tenant="t1", name="CASE-17", reason="r", by=ALICE)
    doc = holds.holds_of(vault)
    assert [h["name"] for h in doc["holds"]] == ["CASE-17", "HR-2"]
    assert [(c["tenant"], c["call_id"]) for c in doc["holds"][0]["calls"]] == [
        ("t1", "a"),
        ("t1", "b"),
        ("t2", "z"),
    ]
    assert (doc["held_calls"], doc["holds_placed"], doc["pending_releases"]) == (3, 4, 1)
    assert doc["holds"][0]["calls"][1]["release"]["by"] == ALICE
    assert holds.counts(vault) == {"held_calls": 3, "holds": 4, "pending_releases": 1}
    assert holds.counts(vault, tenant="t2") == {"held_calls": 1, "holds": 1, "pending_releases": 0}
    t2 = holds.holds_of(vault, tenant="t2")
    assert [c["call_id"] for h in t2["holds"] for c in h["calls"]] == ["z"]
    only = holds.holds_of(vault, name="HR-2")
    assert [h["name"] for h in only["holds"]] == ["HR-2"] and only["held_calls"] == 1


def test_reindex_keeps_holds_and_pending_erasure(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.import_call("a", [str(capture)], tenant="t1")
        holds.place(v, "a", tenant="t1", name="CASE-17", reason="s", by=ALICE)
        holds.request_release(v, "a", tenant="t1", name="CASE-17", reason="r", by=ALICE)
        holds.erase_or_defer(v, "a", tenant="t1", reason="asked", by=BOB)
        before = v.get_call("a", tenant="t1")
        listed = holds.holds_of(v)
        v.reindex()
        after = v.get_call("a", tenant="t1")
        assert after.holds == before.holds and after.pending_erase == before.pending_erase
        assert after.lifecycle_head == before.lifecycle_head
        assert holds.holds_of(v) == listed
    with Vault.open(data, rebuild_index=True) as v:
        assert v.get_call("a", tenant="t1").holds == before.holds
        with pytest.raises(Retained):
            v.erase("a", tenant="t1", reason="x")
