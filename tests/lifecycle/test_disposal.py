"""Disposal with receipts (callvault.lifecycle.disposal) on a real vault, time driven
by an injected clock (Vault.clock): what is due, the signed disposition report
(verifies offline; a tampered one does not), apply (receipt leaf with an inclusion
proof, key destroyed, export refused, audio dead, space reclaimed), holds placed
between plan and apply, approval by a second identity, a clock that went back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callvault.integrity import merkle
from callvault.integrity.leaves import lifecycle_leaf
from callvault.lifecycle import disposal
from callvault.vault import Vault, VaultError

from .disposal_helpers import DAY_US, SEGMENT_BYTES, entry, record, retention

T0 = 1_900_000_000_000_000  # "now" for the tests: 2030-03-17, after the recordings
ALICE = {"name": "alice", "role": "admin", "tenant": None, "via": "token"}
BOB = {"name": "bob", "role": "admin", "tenant": None, "via": "token"}


def at(v: Vault, t: int) -> None:
    v.clock = lambda: t


@pytest.fixture
def v(tmp_path: Path) -> Iterator[Vault]:
    vault = Vault.open(tmp_path / "data", segment_bytes=SEGMENT_BYTES)
    at(vault, T0)
    record(
        vault,
        {
            "old": retention(T0 + 10 * DAY_US),  # due at T0 + 10 d
            "old2": retention(T0 + 20 * DAY_US, rule="complaint", mode="governance"),
            "vip": retention(T0 + 15 * DAY_US, rule="vip", mode="compliance"),
            "long": retention(T0 + 400 * DAY_US),
            "none": None,  # no retention: never due
        },
    )
    yield vault
    vault.close()


def ids(report: disposal.Report) -> list[str]:
    return [c["call_id"] for c in report.calls]


def test_due_follows_the_clock_and_retention_modes(v: Vault) -> None:
    assert ids(disposal.plan(v)) == []
    assert ids(disposal.plan(v, T0 + 10 * DAY_US)) == ["old"]
    assert ids(disposal.plan(v, T0 + 15 * DAY_US - 1)) == ["old"]  # compliance: not before
    assert ids(disposal.plan(v, T0 + 15 * DAY_US)) == ["old", "vip"]
    assert ids(disposal.plan(v, T0 + 30 * DAY_US)) == ["old", "old2", "vip"]
    assert "none" not in ids(disposal.plan(v, T0 + 4000 * DAY_US))
    why = disposal.why_not_due(v, entry(v, "old2"), T0 + 19 * DAY_US)
    assert why is not None and "governance" in why
    why = disposal.why_not_due(v, entry(v, "none"), T0 + 19 * DAY_US)
    assert why is not None and "no retention" in why


def test_a_held_call_is_never_due(v: Vault) -> None:
    hold = {"CASE-17": {"placed_us": T0, "by": ALICE, "reason": "court"}}
    v.change("old", op="hold", changes={"holds": hold}, by=ALICE, reason="court")
    assert ids(disposal.plan(v, T0 + 30 * DAY_US)) == ["old2", "vip"]


def test_the_report_is_signed_and_verifies_offline(v: Vault, tmp_path: Path) -> None:
    report = disposal.plan(v, T0 + 15 * DAY_US, by=ALICE)
    key = v.signer.verifier_key()
    text = report.to_json()
    body = disposal.verify_report(text, key)
    assert [c["call_id"] for c in body["calls"]] == ["old", "vip"]
    c = body["calls"][1]
    assert c["rule"] == "vip" and c["mode"] == "compliance" and c["seal"] == entry(v, "vip").seal
    assert body["log_size"] == v.log_size() and len(body["log_root"]) == 64
    assert body["clock"]["now_us"] == T0 + 15 * DAY_US == body["created_us"]

    def tampered(edit: Any) -> str:
        doc = json.loads(text)
        edit(doc)
        return json.dumps(doc)

    bad = [
        tampered(lambda d: d["report"]["calls"].pop()),  # a call left out
        tampered(lambda d: d["report"]["calls"][0].update(until_us=1)),
        tampered(lambda d: d["report"].update(created_us=1)),
        tampered(lambda d: d.update(signature=d["signature"][:-6] + "AAAAA=")),
    ]
    for t in bad:
        with pytest.raises(disposal.ReportInvalid):
            disposal.verify_report(t, key)
    # the id is part of what is signed, and is the hash of the rest
    with pytest.raises(disposal.ReportInvalid):
        disposal.verify_report(tampered(lambda d: d["report"].update(id="dr-" + "0" * 32)), key)
    # another vault's key
    with Vault.open(tmp_path / "other") as other:
        other_key = other.signer.verifier_key()
    with pytest.raises(disposal.ReportInvalid, match="no signature by a known key"):
        disposal.verify_report(text, other_key)
    # the status and results beside the body are not signed, and may change
    assert disposal.verify_report(tampered(lambda d: d.update(status="applied")), key)


def test_apply_shreds_writes_receipts_and_reclaims(v: Vault, tmp_path: Path) -> None:
    at(v, T0 + 15 * DAY_US)
    keys = {c: v.call_keys.path("default", c) for c in ("old", "vip", "long")}
    assert all(p.exists() for p in keys.values())
    before = v.stats()["stored_bytes"]
    report = disposal.plan(v, by=ALICE)
    out = disposal.apply(v, report, by=ALICE, reclaim_threshold=0.3)
    assert out["disposed"] == 2 and out["skipped"] == 0
    for c in ("old", "vip"):
        e = entry(v, c)
        assert e.state == "erased"
        assert e.erase_reason.startswith(f"disposed by report {report.id}: retention ended ")
        assert e.disposal is not None and e.disposal["report"] == report.id
        assert not keys[c].exists()
        with pytest.raises(VaultError):
            v.export(c, tmp_path / f"{c}.ogg")
        with pytest.raises(VaultError):
            v.read_packets(c)
        # the receipt: the LIFECYCLE record's leaf, provable against the log
        leaf = next(r["receipt_leaf"] for r in out["calls"] if r["call_id"] == c)
        assert leaf == e.lifecycle_leaves[-1]
        size, leaf_hash, path, root = v.inclusion_proof(leaf)
        data = lifecycle_leaf("default", c, bytes.fromhex(e.lifecycle_head), T0 + 15 * DAY_US)
        assert leaf_hash == merkle.leaf_hash(data)
        assert merkle.root_from_inclusion_proof(leaf, size, leaf_hash, path) == root
    assert keys["long"].exists() and entry(v, "long").state == "sealed"
    assert v.verify_call("long") == [] and v.verify_call("old") == []
    assert out["reclaim"]["bytes_freed"] > 0
    assert v.stats()["stored_bytes"] < before
    assert v.verify_all() == []
    # kept, applied, with its results
    kept = disposal.load(v, report.id)
    assert kept.status == "applied" and kept.results is not None
    assert kept.results["disposed"] == 2
    # applying again changes nothing
    again = disposal.apply(v, report, by=ALICE)
    assert again["disposed"] == 2 and entry(v, "long").state == "sealed"
    assert ids(disposal.plan(v)) == []


def test_a_hold_placed_after_the_plan_is_skipped(v: Vault) -> None:
    at(v, T0 + 30 * DAY_US)
    report = disposal.plan(v, by=ALICE)
    assert ids(report) == ["old", "old2", "vip"]
    hold = {"CASE-9": {"placed_us": T0, "by": BOB, "reason": "court"}}
    v.change("vip", op="hold", changes={"holds": hold}, by=BOB, reason="court")
    out = disposal.apply(v, report, by=ALICE)
    vip = next(r for r in out["calls"] if r["call_id"] == "vip")
    assert vip["outcome"] == "skipped" and "CASE-9" in vip["why"]
    assert entry(v, "vip").state == "sealed" and entry(v, "vip").disposal is None
    assert v.verify_call("vip") == []
    assert entry(v, "old").state == entry(v, "old2").state == "erased"


def test_a_pending_erasure_is_carried_out_once_nothing_keeps_the_call(v: Vault) -> None:
    # "long" (default mode, kept 400 d) under a hold; an erasure asked meanwhile waits
    hold = {"CASE-1": {"placed_us": T0, "by": ALICE, "reason": "court"}}
    v.change("long", op="hold", changes={"holds": hold}, by=ALICE)
    pend = {"requested_us": T0, "by": BOB, "reason": "subject asked"}
    v.change("long", op="erase-deferred", changes={"pending_erase": pend}, by=BOB)
    assert "long" not in ids(disposal.plan(v, T0 + DAY_US))  # the hold keeps it
    v.change("long", op="release", changes={"holds": {}}, by=BOB, reason="case closed")
    at(v, T0 + 2 * DAY_US)
    report = disposal.plan(v)
    assert ids(report) == ["long"] and report.calls[0]["why"] == "pending-erase"
    disposal.apply(v, report)
    e = entry(v, "long")
    assert e.state == "erased" and "deferred erasure carried out (subject asked)" in e.erase_reason


def test_approval_needs_a_second_identity(v: Vault) -> None:
    at(v, T0 + 11 * DAY_US)
    settings = disposal.Settings(approval=True)
    report = disposal.run(v, settings, by=ALICE)
    assert report is not None and report.status == "pending" and ids(report) == ["old"]
    assert entry(v, "old").state == "sealed"
    # the sweeper again: the same calls, no second pending report
    assert disposal.run(v, settings, by=None).id == report.id  # type: ignore[union-attr]
    assert [r.id for r in disposal.pending(v)] == [report.id]
    with pytest.raises(disposal.DisposalError, match="another identity"):
        disposal.approve(v, report.id, by=ALICE)
    done = disposal.approve(v, report.id, by=BOB)
    assert done.status == "applied" and entry(v, "old").state == "erased"
    assert done.approved_by == BOB
    with pytest.raises(disposal.DisposalError, match="applied, not pending"):
        disposal.approve(v, report.id, by=BOB)
    assert disposal.pending(v) == []


def test_without_approval_run_applies(v: Vault) -> None:
    at(v, T0 + 11 * DAY_US)
    report = disposal.run(v, disposal.Settings(), by=ALICE)
    assert report is not None and report.status == "applied"
    assert entry(v, "old").state == "erased"
    assert disposal.run(v, disposal.Settings()) is None  # nothing due now


def test_a_clock_that_went_back_is_refused(v: Vault) -> None:
    latest = v.latest_us()
    assert latest >= T0  # the group commits at the injected clock
    at(v, T0 + 30 * DAY_US)
    disposal.run(v, disposal.Settings())  # receipts at T0 + 30 d
    assert v.latest_us() >= T0 + 30 * DAY_US
    at(v, T0 + 20 * DAY_US)
    with pytest.raises(disposal.ClockWentBack, match="earlier than .* the vault recorded"):
        disposal.plan(v)
    at(v, T0 + 30 * DAY_US - disposal.CLOCK_TOLERANCE_US // 2)  # within the tolerance
    report_ok = disposal.plan(v)
    at(v, T0 + 20 * DAY_US)
    with pytest.raises(disposal.ClockWentBack):
        disposal.apply(v, report_ok)
    # reindex keeps it: rebuilt from the records' times
    v.reindex()
    assert v.latest_us() >= T0 + 30 * DAY_US
    with pytest.raises(disposal.ClockWentBack):
        disposal.plan(v)


def test_settings_are_validated() -> None:
    assert disposal.Settings.parse(None).interval_s == 3600
    s = disposal.Settings.parse({"approval": True, "interval_s": 0})
    assert s.approval and s.interval_s == 0
    for bad in ({"approval": "yes"}, {"interval_s": -1}, {"bogus": 1}, {"reclaim_threshold": 2}):
        with pytest.raises(Exception, match=r"\[disposal\]"):
            disposal.Settings.parse(bad)


def test_tenant_scoped_plan(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "d", segment_bytes=SEGMENT_BYTES) as v:
        at(v, T0)
        record(v, {"a": retention(T0 + DAY_US)}, tenant="acme")
        record(v, {"b": retention(T0 + DAY_US)}, tenant="zeta")
        assert ids(disposal.plan(v, T0 + 2 * DAY_US)) == ["a", "b"]
        assert ids(disposal.plan(v, T0 + 2 * DAY_US, tenant="zeta")) == ["b"]


def test_a_hold_placed_between_receipt_and_erasure_withdraws_the_receipt(v: Vault) -> None:
    at(v, T0 + 30 * DAY_US)
    report = disposal.plan(v, by=ALICE)

    def hold_on_receipt(e: Any, doc: dict[str, Any]) -> None:
        if doc["op"] == "dispose" and e.call_id == "old2":  # a court order, just then
            hold = {"CASE-5": {"placed_us": T0, "by": BOB, "reason": "court"}}
            v.change("old2", op="hold", changes={"holds": hold}, by=BOB, reason="court")

    v.after_change.append(hold_on_receipt)
    out = disposal.apply(v, report, by=ALICE)
    r = next(r for r in out["calls"] if r["call_id"] == "old2")
    assert r["outcome"] == "withdrawn" and "CASE-5" in r["why"]
    e = entry(v, "old2")
    assert e.state == "sealed" and e.disposal is None and e.holds
    assert e.lifecycle_count == 3  # the receipt, the hold, the withdrawal: all chained
    assert v.verify_call("old2") == [] and len(list(v.read_packets("old2"))) > 0
    assert entry(v, "old").state == entry(v, "vip").state == "erased"
    assert disposal.finish(v) == []  # nothing left half-done


def test_a_report_the_sweeper_planned_needs_two_approvers(v: Vault) -> None:
    """Nobody planned the sweeper's report: one admin alone cannot dispose of it."""
    at(v, T0 + 11 * DAY_US)
    report = disposal.run(v, disposal.Settings(approval=True), by=None)
    assert report is not None and report.status == "pending"
    first = disposal.approve(v, report.id, by=ALICE)
    assert first.status == "pending" and first.first_approval == ALICE
    assert entry(v, "old").state == "sealed"  # nothing disposed by one person
    with pytest.raises(disposal.DisposalError, match="another identity"):
        disposal.approve(v, report.id, by=ALICE)
    done = disposal.approve(v, report.id, by=BOB)
    assert done.status == "applied" and entry(v, "old").state == "erased"


def test_a_pending_erasure_carried_out_by_a_disposal_is_said_as_a_release_says_it(
    v: Vault,
) -> None:
    hold = {"CASE-2": {"placed_us": T0, "by": ALICE, "reason": "court"}}
    v.change("long", op="hold", changes={"holds": hold}, by=ALICE)
    pend = {"requested_us": T0 + 5, "by": BOB, "reason": "subject asked"}
    v.change("long", op="erase-deferred", changes={"pending_erase": pend}, by=BOB)
    v.change("long", op="release", changes={"holds": {}}, by=BOB, reason="case closed")
    at(v, T0 + 2 * DAY_US)
    out = disposal.apply(v, disposal.plan(v))
    (r,) = [r for r in out["calls"] if r["call_id"] == "long"]
    e = entry(v, "long")
    assert r["outcome"] == "disposed" and r["erased"] is True
    assert r["erase_log_index"] == e.erase_log_index >= 0
    assert r["pending_erase"] == {"requested_us": T0 + 5, "by": BOB, "reason": "subject asked"}
    assert all("pending_erase" not in x for x in out["calls"] if x["call_id"] != "long")
