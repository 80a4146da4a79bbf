"""The SDK's Lifecycle methods (holds, disposal, archive run) against a real server on
loopback with real tokens: what they return, and errors mapped to the SDK's classes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from callvault_client import Client, errors

from callvault.access.authn import CredentialAuthenticator
from callvault.server.app import Server
from callvault.server.servicers import Config
from callvault.vault import Vault
from tests.lifecycle.disposal_helpers import DAY_US, SEGMENT_BYTES, record, retention
from tests.server.access_fixtures import STORE, token_for

pytestmark = pytest.mark.timeout(300)

T0 = 1_900_000_000_000_000
NOW = T0 + 30 * DAY_US


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    with Vault.open(data, segment_bytes=SEGMENT_BYTES) as v:
        v.clock = lambda: T0
        record(v, {"a": retention(T0 + DAY_US), "b": retention(T0 + DAY_US)}, tenant="t1")
        record(v, {"k": retention(T0 + 400 * DAY_US)}, tenant="t1")
    v = Vault.open(data, segment_bytes=SEGMENT_BYTES)
    v.clock = lambda: NOW
    s = Server(
        v,
        "127.0.0.1:0",
        Config(reclaim_interval_s=0, disposal={"approval": True, "interval_s": 0}),
        auth=CredentialAuthenticator(STORE),
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def client(s: Server, name: str, role: str, tenant: str | None) -> Client:
    return Client(f"127.0.0.1:{s.port}", token=token_for(name, role, tenant), timeout=60)


def test_holds(server: Server) -> None:
    with (
        client(server, "sdk-legal-a", "legal", "t1") as a,
        client(server, "sdk-legal-b", "legal", "t1") as b,
        client(server, "sdk-qa", "qa", "t1") as qa,
        client(server, "sdk-admin", "admin", "t1") as admin,
    ):
        with pytest.raises(errors.PermissionDenied):
            qa.place_hold("a", "CASE-1", "x")
        with pytest.raises(errors.InvalidArgument, match="hold name"):
            a.place_hold("a", "CASE 1", "x")
        with pytest.raises(errors.InvalidArgument, match="reason"):
            a.place_hold("a", "CASE-1", "")
        r = a.place_hold(["a", "b"], "CASE-1", "subpoena")
        assert list(r.call_ids) == ["a", "b"] and all(o.changed for o in r.outcomes)
        assert all(o.log_index >= 0 and o.link for o in r.outcomes)
        again = b.place_hold("a", "CASE-1", "again")
        assert list(again.call_ids) == [] and "already under hold" in again.outcomes[0].note
        with pytest.raises(errors.NotFound):
            a.place_hold("nope", "CASE-1", "x")
        # an erasure of a held call is deferred; the release carries it out
        er = admin.erase("a", "DSAR 3")
        assert er.deferred and "held by CASE-1" in er.deferred_why
        doc = a.list_holds()
        assert [(h["name"], [c["call_id"] for c in h["calls"]]) for h in doc["holds"]] == [
            ("CASE-1", ["a", "b"])
        ]
        assert b.list_holds(name="OTHER")["holds"] == []
        with pytest.raises(errors.PermissionDenied):
            qa.list_holds()
        with pytest.raises(errors.PermissionDenied, match="no release"):
            b.approve_release("a", "CASE-1")
        req = a.request_release("a", "CASE-1", "settled")
        assert req.outcomes[0].changed
        with pytest.raises(errors.PermissionDenied, match="dual control"):
            a.approve_release("a", "CASE-1")
        done = b.approve_release("a", "CASE-1")
        (o,) = done.outcomes
        assert o.changed and o.erased and o.erase_log_index >= 0
        assert a.get_call("a").state == "erased"
        assert [h["name"] for h in a.list_holds()["holds"]] == ["CASE-1"]
        assert [h.name for h in a.get_call("b").holds] == ["CASE-1"]


def test_disposal(server: Server) -> None:
    with (
        client(server, "sdk-alice", "admin", None) as alice,
        client(server, "sdk-bob", "admin", None) as bob,
        client(server, "sdk-lena", "legal", None) as lena,
    ):
        plan = lena.plan_disposal()
        assert plan.status == "planned"
        calls = json.loads(plan.report_json)["report"]["calls"]
        assert [c["call_id"] for c in calls] == ["a", "b"]
        with pytest.raises(errors.PermissionDenied):
            lena.dispose()
        assert lena.list_disposal_reports() == []
        pending = alice.dispose(reason="quarterly")
        assert pending.status == "pending" and pending.disposed == 0
        rid = json.loads(pending.report_json)["report"]["id"]
        assert [r["status"] for r in lena.list_disposal_reports()] == ["pending"]
        with pytest.raises(errors.FailedPrecondition, match="another identity"):
            alice.dispose(report_id=rid)
        done = bob.dispose(report_id=rid)
        assert (done.status, done.disposed, done.skipped) == ("applied", 2, 0)
        assert done.reclaimed_bytes > 0
        assert alice.get_call("a", tenant="t1").state == "erased"
        assert alice.get_call("k", tenant="t1").state == "sealed"
        nothing = lena.plan_disposal()
        assert nothing.status == "planned"
        assert json.loads(nothing.report_json)["report"]["calls"] == []
        none = alice.dispose()
        assert none.status == "" and none.report_json == "" and none.disposed == 0


def test_archive_run_without_archive(server: Server) -> None:
    with (
        client(server, "sdk-root", "admin", None) as root,
        client(server, "sdk-t1-admin", "admin", "t1") as t1,
    ):
        with pytest.raises(errors.PermissionDenied):
            t1.archive_run()
        with pytest.raises(errors.CallvaultClientError, match="no archive"):
            root.archive_run(limit=1)
