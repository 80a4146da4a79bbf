"""Tenant isolation (docs/access.md "Tenants") against a real server: another
tenant's call is NOT_FOUND with exactly the message of a call that does not
exist, on every method that takes a call; searches, Verify and Stats show
nothing of another tenant; a tenant recorder records only into its tenant."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault.media import sample
from tests.rtpfeed import capture_feed
from tests.server.access_fixtures import (
    CALLS,
    OPEN_CALL,
    AccessServer,
    MakeIdentity,
    Metadata,
    invoke,
    metadata_of,
    populate,
    serve,
)

P = "/callvault.v1."
REASON = [("callvault-reason", "tenant test")]
T1_CALLS = sorted(c for t, c in [*CALLS, OPEN_CALL] if t == "t1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    tmp = tmp_path_factory.mktemp("tenants")
    capture = tmp / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    populate(tmp / "vault", capture)
    yield from serve(tmp / "vault")


@pytest.fixture(scope="module")
def channel(world: AccessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def admin1(identities: MakeIdentity) -> Metadata:
    """The most an identity of tenant t1 can do: an admin, with a reason."""
    return identities("admin-1", "admin", "t1") + REASON


def ref(call_id: str, tenant: str) -> pb.CallRef:
    return pb.CallRef(tenant=tenant, call_id=call_id)


# every method that takes a call: (method, request of call C in tenant T)
BY_CALL = {
    "Archive/GetCall": lambda c, t: pb.GetCallRequest(call=ref(c, t)),
    "Archive/Play": lambda c, t: pb.PlayRequest(call=ref(c, t), format=pb.PCM),
    "Archive/Export": lambda c, t: pb.ExportRequest(call=ref(c, t)),
    "Archive/RequestExport": lambda c, t: pb.RequestExportRequest(call=ref(c, t), reason="x"),
    "Integrity/GetBundle": lambda c, t: pb.GetBundleRequest(call=ref(c, t)),
    "Integrity/GetInclusionProof": lambda c, t: pb.InclusionProofRequest(call=ref(c, t)),
    "Admin/Erase": lambda c, t: pb.EraseRequest(call=ref(c, t), reason="x"),
}


@pytest.mark.parametrize("method", sorted(BY_CALL))
def test_another_tenants_call_is_not_found_as_a_missing_one(
    method: str, channel: grpc.Channel, admin1: Metadata
) -> None:
    make = BY_CALL[method]
    there = invoke(channel, P + method, make("foreign", "t2"), admin1)
    ghost = invoke(channel, P + method, make("ghost", "t2"), admin1)
    assert there.code == ghost.code == grpc.StatusCode.NOT_FOUND
    assert there.details == "no call foreign in tenant t2"
    assert ghost.details == "no call ghost in tenant t2"
    assert there.replies == ghost.replies == []
    # and the same call id in t1 is not the one of t2 either (no fallback)
    mine = invoke(channel, P + method, make("foreign", ""), admin1)
    assert mine.code == grpc.StatusCode.NOT_FOUND
    assert mine.details == "no call foreign in tenant t1"


def test_the_call_of_t2_is_still_there_for_its_own_tenant(
    channel: grpc.Channel,
    identities: MakeIdentity,
) -> None:
    """The NOT_FOUND above is isolation, not an erasure by the Erase attempt."""
    o = invoke(
        channel,
        P + "Archive/GetCall",
        pb.GetCallRequest(call=ref("foreign", "")),
        identities("qa-2", "qa", "t2"),
    )
    assert o.code == grpc.StatusCode.OK and o.replies[0].state == "sealed"
    assert o.replies[0].tenant == "t2"


def test_search_returns_only_the_callers_tenant(channel: grpc.Channel, admin1: Metadata) -> None:
    mine = invoke(channel, P + "Archive/Search", pb.SearchRequest(), admin1)
    assert sorted(c.call_id for c in mine.replies) == T1_CALLS
    assert {c.tenant for c in mine.replies} == {"t1"}
    other = invoke(channel, P + "Archive/Search", pb.SearchRequest(tenant="t2"), admin1)
    assert other.code == grpc.StatusCode.OK and other.replies == []
    page = invoke(channel, P + "Archive/SearchCalls", pb.SearchRequest(tenant="t2"), admin1)
    assert page.code == grpc.StatusCode.OK and list(page.replies[0].calls) == []
    # a platform identity names the tenant it wants
    platform = invoke(
        channel,
        P + "Archive/Search",
        pb.SearchRequest(tenant="t2"),
        metadata_of("root", "admin", None),
    )
    assert [c.call_id for c in platform.replies] == ["foreign"]


def test_verify_names_another_tenants_call_as_missing(
    channel: grpc.Channel, admin1: Metadata
) -> None:
    def verify(call_id: str) -> list[tuple[str, bool, list[str]]]:
        o = invoke(
            channel,
            P + "Integrity/Verify",
            pb.VerifyRequest(tenant="t2", call_ids=[call_id]),
            admin1,
        )
        assert o.code == grpc.StatusCode.OK, o.details
        return [(r.what, r.ok, list(r.problems)) for r in o.replies]

    assert verify("foreign") == [
        ("call foreign", False, ["call foreign: no call foreign in tenant t2"])
    ]
    assert verify("ghost") == [("call ghost", False, ["call ghost: no call ghost in tenant t2"])]
    every = invoke(channel, P + "Integrity/Verify", pb.VerifyRequest(all=True), admin1)
    assert sorted(r.what for r in every.replies) == [f"call {c}" for c in T1_CALLS]


def test_stats_count_only_the_callers_tenant(
    channel: grpc.Channel,
    admin1: Metadata,
    identities: MakeIdentity,
) -> None:
    t1 = invoke(channel, P + "Admin/Stats", pb.StatsRequest(), admin1).replies[0]
    t2 = invoke(
        channel, P + "Admin/Stats", pb.StatsRequest(), identities("it-2", "it", "t2")
    ).replies[0]
    everyone = invoke(
        channel,
        P + "Admin/Stats",
        pb.StatsRequest(),
        metadata_of("root", "admin", None),
    ).replies[0]
    assert (t1.tenant, t1.calls) == ("t1", len(T1_CALLS))
    assert (t2.tenant, t2.calls) == ("t2", 1)
    assert everyone.tenant == "" and everyone.calls == len(T1_CALLS) + 1
    # nothing server-wide leaks to a tenant identity
    for s in (t1, t2):
        assert s.stored_bytes == s.log_size == s.free_disk_bytes == s.packets_total == 0
        assert dict(s.rpcs) == {} and s.streams == 0
    assert everyone.stored_bytes > 0 and everyone.log_size > 0 and everyone.rpcs


def test_tenant_identities_ask_proofs_by_call(channel: grpc.Channel, admin1: Metadata) -> None:
    o = invoke(
        channel, P + "Integrity/GetInclusionProof", pb.InclusionProofRequest(leaf_index=0), admin1
    )
    assert o.code == grpc.StatusCode.PERMISSION_DENIED
    assert "asks the proof of a call" in o.details
    mine = invoke(
        channel,
        P + "Integrity/GetInclusionProof",
        pb.InclusionProofRequest(call=ref("own", "")),
        admin1,
    )
    assert mine.code == grpc.StatusCode.OK, mine.details


def test_a_tenant_recorder_records_into_its_tenant_only(
    channel: grpc.Channel,
    identities: MakeIdentity,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    capture = tmp_path_factory.mktemp("rec") / "call.pcap"
    sample.demo_capture(capture, seconds=2.0)
    feed = capture_feed(capture)
    rec = identities("sidecar-1", "recorder", "t1")
    ok = invoke(channel, P + "Ingest/Record", list(feed.requests("rec-1")), rec)
    assert ok.code == grpc.StatusCode.OK, ok.details
    assert ok.replies[-1].WhichOneof("msg") == "sealed"
    reqs = list(feed.requests("rec-2"))
    reqs[0].start.tenant = "t2"
    refused = invoke(channel, P + "Ingest/Record", reqs, rec)
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details == "sidecar-1 records for tenant t1, not t2 (call rec-2)"
    # RecordCalls: that call fails, the stream and its other calls go on
    mine = pb.CallStart()
    mine.CopyFrom(reqs[0].start)
    mine.tenant, mine.call_id = "", "rec-3"
    mux = pb.IngestMux(
        items=[
            pb.IngestMuxItem(slot=1, start=reqs[0].start),
            pb.IngestMuxItem(slot=2, start=mine),
        ]
    )
    o = invoke(channel, P + "Ingest/RecordCalls", [mux], rec)
    assert o.code == grpc.StatusCode.OK, o.details
    events = {e.slot: e for r in o.replies for e in r.events}
    assert events[1].WhichOneof("msg") == "error"
    assert events[1].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert events[1].error.message == "sidecar-1 records for tenant t1, not t2 (call rec-2)"
    assert events[2].WhichOneof("msg") == "started"
    root = metadata_of("root", "admin", None)
    where = invoke(channel, P + "Archive/GetCall", pb.GetCallRequest(call=ref("rec-1", "t1")), root)
    assert where.code == grpc.StatusCode.OK and where.replies[0].state == "sealed"
    for tenant in ("t2", "default"):
        for call_id in ("rec-1", "rec-2"):
            o = invoke(
                channel, P + "Archive/GetCall", pb.GetCallRequest(call=ref(call_id, tenant)), root
            )
            assert o.code == grpc.StatusCode.NOT_FOUND, (tenant, call_id)


def test_a_tenant_recorder_asks_decisions_in_its_tenant_only(
    world: AccessServer, channel: grpc.Channel, identities: MakeIdentity
) -> None:
    """Ingest.Decide is scoped like a CallStart: a t1 recorder naming t2 is refused and
    nothing is decided (stored) in t2; its own tenant is answered."""
    rec = identities("sidecar-1", "recorder", "t1")
    start = pb.CallStart(call_id="decide-x", tenant="t2", consent=pb.CONSENT_DECLINED)
    start.legs.add(name="agent")
    o = invoke(channel, "/callvault.v1.Ingest/Decide", start, rec)
    assert o.code == grpc.StatusCode.PERMISSION_DENIED, o.details
    vault = world.server.vault
    assert vault.index.get_decision("t2", "decide-x") is None
    start.tenant = ""
    o = invoke(channel, "/callvault.v1.Ingest/Decide", start, rec)
    assert o.code == grpc.StatusCode.OK, o.details


def test_health_is_open_without_credentials(channel: grpc.Channel) -> None:
    """A load balancer's probe carries no token: health answers it (open, as
    docs/access.md says), where any callvault method is UNAUTHENTICATED."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    o = invoke(channel, "/callvault.v1.Admin/Stats", pb.StatsRequest(), [])
    assert o.code == grpc.StatusCode.UNAUTHENTICATED
