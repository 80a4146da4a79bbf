"""Four-eyes export (docs/access.md "Four-eyes export") against a real server: a
legal identity requests, a different one approves, the approval allows one export
of that call by the requester within the time limit; and the store of requests
(access/exports.py) on its own: durable, used once, expiry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault.access.exports import ExportRequests, RequestNotFound
from callvault.access.identity import Identity
from callvault.access.policy import AccessDenied
from callvault.errors import InputError
from callvault.media import sample
from callvault.server.servicers import Config
from tests.server.access_fixtures import (
    AccessServer,
    MakeIdentity,
    Outcome,
    invoke,
    populate,
    serve,
)

P = "/callvault.v1.Archive/"
TTL_S = 2.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    tmp = tmp_path_factory.mktemp("exports")
    capture = tmp / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    populate(tmp / "vault", capture)
    yield from serve(tmp / "vault", Config(export_approval_s=TTL_S))


@pytest.fixture(scope="module")
def channel(world: AccessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.address) as ch:
        yield ch


class Legal:
    def __init__(self, channel: grpc.Channel, identities: MakeIdentity) -> None:
        self.ch = channel
        self.ids = identities

    def md(
        self, name: str, role: str = "legal", tenant: str | None = "t1"
    ) -> list[tuple[str, str]]:
        return self.ids(name, role, tenant)

    def request(self, name: str, call_id: str = "own", reason: str = "subpoena") -> Outcome:
        r = pb.RequestExportRequest(call=pb.CallRef(call_id=call_id), reason=reason)
        return invoke(self.ch, P + "RequestExport", r, self.md(name))

    def approve(self, md: list[tuple[str, str]], rid: str) -> Outcome:
        return invoke(self.ch, P + "ApproveExport", pb.ApproveExportRequest(id=rid), md)

    def export(self, name: str, approval: str, call_id: str = "own") -> Outcome:
        r = pb.ExportRequest(call=pb.CallRef(call_id=call_id), approval=approval)
        return invoke(self.ch, P + "Export", r, self.md(name))

    def bundle(self, name: str, approval: str) -> Outcome:
        r = pb.GetBundleRequest(call=pb.CallRef(call_id="own"), approval=approval)
        return invoke(self.ch, "/callvault.v1.Integrity/GetBundle", r, self.md(name))


@pytest.fixture
def legal(channel: grpc.Channel, identities: MakeIdentity) -> Legal:
    return Legal(channel, identities)


def ok(o: Outcome) -> Outcome:
    assert o.code == grpc.StatusCode.OK, f"{o.code.name}: {o.details}"
    return o


def refused(o: Outcome, *words: str) -> None:
    assert o.code == grpc.StatusCode.PERMISSION_DENIED, f"{o.code.name}: {o.details}"
    for w in words:
        assert w in o.details, o.details


def test_request_approve_export_once(legal: Legal) -> None:
    rid = ok(legal.request("ann")).replies[0].id
    assert rid.startswith("xr-")
    refused(legal.export("ann", rid), "not approved yet", f"export-approve {rid}")
    approved = ok(legal.approve(legal.md("bob"), rid)).replies[0]
    assert (approved.state, approved.requested_by, approved.approved_by) == (
        "approved",
        "ann",
        "bob",
    )
    assert approved.expires_us - approved.approved_us == int(TTL_S * 1e6)
    refused(legal.export("bob", rid), "only they use it")  # the approver does not export
    refused(legal.export("ann", rid, call_id="other"), "is for call own, not other")
    files = ok(legal.export("ann", rid)).replies
    assert (
        files and files[0].name == "call.ogg" and sum(len(f.data) for f in files) == files[0].size
    )
    refused(legal.export("ann", rid), "used already")
    refused(legal.bundle("ann", rid), "used already")
    listed = ok(
        invoke(
            legal.ch, P + "ListExportRequests", pb.ListExportRequestsRequest(), legal.md("carol")
        )
    )
    mine = [r for r in listed.replies[0].requests if r.id == rid]
    assert [(r.state, r.used_for, r.used_by) for r in mine] == [("used", "export", "ann")]


def test_the_same_person_cannot_approve(legal: Legal) -> None:
    rid = ok(legal.request("ann")).replies[0].id
    refused(legal.approve(legal.md("ann"), rid), "four eyes")
    # not as admin either: it is the same person (name)
    refused(legal.approve(legal.md("ann", "admin"), rid), "four eyes")
    ok(legal.approve(legal.md("dora", "admin"), rid))
    refused(legal.approve(legal.md("eve"), rid), "not pending")
    # a bundle is one use too
    names = {f.name for f in ok(legal.bundle("ann", rid)).replies}
    assert {"manifest.json", "call.ogg"} <= names
    refused(legal.export("ann", rid), "used already")


def test_an_expired_approval_is_refused(legal: Legal) -> None:
    rid = ok(legal.request("ann")).replies[0].id
    ok(legal.approve(legal.md("bob"), rid))
    time.sleep(TTL_S + 0.5)
    refused(legal.export("ann", rid), "expired", "request again")


def test_other_tenants_and_roles(legal: Legal) -> None:
    rid = ok(legal.request("ann")).replies[0].id
    other = legal.approve(legal.md("tom", "legal", "t2"), rid)
    assert other.code == grpc.StatusCode.NOT_FOUND and other.details == f"no export request {rid}"
    ghost = legal.approve(legal.md("tom", "legal", "t2"), "xr-0000000000000000")
    assert ghost.details == "no export request xr-0000000000000000"
    refused(legal.approve(legal.md("quinn", "qa"), rid))  # the role table
    listed = invoke(
        legal.ch,
        P + "ListExportRequests",
        pb.ListExportRequestsRequest(),
        legal.md("tom", "legal", "t2"),
    )
    assert list(ok(listed).replies[0].requests) == []
    no_reason = legal.request("ann", reason="  ")
    assert no_reason.code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in no_reason.details
    # another tenant's call cannot be requested, as if it did not exist
    r = pb.RequestExportRequest(call=pb.CallRef(tenant="t2", call_id="foreign"), reason="x")
    o = invoke(legal.ch, P + "RequestExport", r, legal.md("ann"))
    assert o.code == grpc.StatusCode.NOT_FOUND and o.details == "no call foreign in tenant t2"


# -- the store on its own -----------------------------------------------------------

ANN = Identity("ann", "legal", "t1", "test")
BOB = Identity("bob", "legal", "t1", "test")


def test_the_store_is_durable_and_an_approval_is_used_once(tmp_path: Path) -> None:
    store = ExportRequests(tmp_path / "access", ttl_s=60)
    r = store.request(ANN, "t1", "c1", "court order")
    store.approve(BOB, r.id, now_us=1_000_000)
    again = ExportRequests(tmp_path / "access", ttl_s=60)  # as after a restart
    assert again.items[r.id].approved_by == "bob"
    again.use(ANN, r.id, "t1", "c1", "export", now_us=2_000_000)
    with pytest.raises(AccessDenied, match="used already"):
        ExportRequests(tmp_path / "access", ttl_s=60).use(
            ANN, r.id, "t1", "c1", "export", now_us=3_000_000
        )
    body = json.loads((tmp_path / "access" / "export-requests.json").read_text())
    assert body["version"] == 1 and body["requests"][0]["used_for"] == "export"
    assert (tmp_path / "access" / "export-requests.json").stat().st_mode & 0o777 == 0o600


def test_the_store_expires_approvals(tmp_path: Path) -> None:
    store = ExportRequests(tmp_path, ttl_s=10)
    r = store.request(ANN, "t1", "c1", "court order")
    store.approve(BOB, r.id, now_us=1_000_000)
    with pytest.raises(AccessDenied, match="expired"):
        store.use(ANN, r.id, "t1", "c1", "bundle", now_us=11_000_000)
    assert store.items[r.id].state(10_999_999) == "approved"
    with pytest.raises(RequestNotFound):
        store.approve(Identity("x", "legal", "t2", "test"), r.id)


def test_a_damaged_store_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "export-requests.json").write_text("{not json")
    with pytest.raises(Exception, match="cannot read the export requests"):
        ExportRequests(tmp_path)


def test_the_time_limit_is_a_positive_setting() -> None:
    assert Config().export_approval_s == 24 * 3600
    for bad in (0, -1):
        with pytest.raises(InputError, match="export_approval_s must be positive"):
            Config(export_approval_s=bad)
