"""Legal holds through a real server on loopback (real tokens, RocksDB, Merkle log):
dual control over gRPC with two legal identities, a qa refused, another tenant's call
NOT_FOUND, an erasure of a held call deferred and carried out at the release, the
audit trail's entries, Stats 87-89, and the hold's leaf proven against a signed
checkpoint. Also the command line, local and remote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault.integrity import checkpoint, merkle
from callvault.integrity.leaves import lifecycle_leaf
from callvault.media import sample
from callvault.vault import Vault
from tests.server.access_fixtures import (
    AccessServer,
    MakeIdentity,
    Metadata,
    Outcome,
    identities,
    invoke,
    serve,
    token_for,
)
from tests.servers import run_cli

__all__ = ["identities"]  # the fixture

LC = "/callvault.v1.Lifecycle/"
ADMIN = "/callvault.v1.Admin/"
INTEG = "/callvault.v1.Integrity/"
T0 = 1_790_000_000_000_000


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=1.0)
    return path


@pytest.fixture
def server(tmp_path: Path, capture: Path) -> Iterator[AccessServer]:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        for tenant, call_id in (("t1", "a"), ("t1", "b"), ("t1", "c"), ("t2", "x")):
            v.import_call(call_id, [str(capture)], tenant=tenant)
    for s in serve(data):
        s.server.vault.clock = lambda: T0
        yield s


def ref(call_id: str, tenant: str = "") -> pb.CallRef:
    return pb.CallRef(tenant=tenant, call_id=call_id)


def hold(
    s: AccessServer, method: str, md: Metadata, *calls: str, name: str = "CASE-17", reason: str = ""
) -> Outcome:
    with grpc.insecure_channel(s.address) as ch:
        return invoke(
            ch,
            LC + method,
            pb.HoldRequest(calls=[ref(c) for c in calls], name=name, reason=reason),
            md,
        )


def call(s: AccessServer, method: str, request: object, md: Metadata) -> Outcome:
    with grpc.insecure_channel(s.address) as ch:
        return invoke(ch, method, request, md)


def ok(o: Outcome) -> Any:
    assert o.code == grpc.StatusCode.OK, f"{o.code.name}: {o.details}"
    return o.replies[0]


def test_dual_control_over_grpc(server: AccessServer, identities: MakeIdentity) -> None:
    a = identities("legal-a", "legal", "t1")
    b = identities("legal-b", "legal", "t1")
    qa = identities("qa-1", "qa", "t1")
    admin = identities("admin-t1", "admin", "t1")
    # a qa may not hold; a hold needs a reason and a valid name
    assert hold(server, "PlaceHold", qa, "a", reason="x").code == grpc.StatusCode.PERMISSION_DENIED
    bad = hold(server, "PlaceHold", a, "a")
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in bad.details
    bad = hold(server, "PlaceHold", a, "a", name="CASE 17", reason="x")
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "hold name" in bad.details
    r = ok(hold(server, "PlaceHold", a, "a", "b", reason="subpoena 2026-114"))
    assert list(r.call_ids) == ["a", "b"] and all(o.changed for o in r.outcomes)
    again = ok(hold(server, "PlaceHold", b, "a", reason="again"))
    assert list(again.call_ids) == [] and "already under hold" in again.outcomes[0].note
    # the erasure of a held call is deferred, recorded, and reported (OK, deferred)
    er = ok(call(server, ADMIN + "Erase", pb.EraseRequest(call=ref("a"), reason="DSAR 9"), admin))
    assert er.deferred and "held by CASE-17" in er.deferred_why and er.log_index >= 0
    info = ok(call(server, "/callvault.v1.Archive/GetCall", pb.GetCallRequest(call=ref("a")), a))
    assert info.state == "sealed" and info.erase_pending and info.erase_pending_reason == "DSAR 9"
    assert [(h.name, h.placed_by, h.reason) for h in info.holds] == [
        ("CASE-17", "legal-a", "subpoena 2026-114")
    ]
    # no approval before a request; the requester may not approve its own request
    no = hold(server, "ApproveRelease", b, "a")
    assert no.code == grpc.StatusCode.PERMISSION_DENIED and "no release" in no.details
    ok(hold(server, "RequestRelease", a, "a", reason="case settled"))
    own = hold(server, "ApproveRelease", a, "a")
    assert own.code == grpc.StatusCode.PERMISSION_DENIED
    assert "requested by legal-a" in own.details and "dual control" in own.details
    assert hold(server, "ApproveRelease", qa, "a").code == grpc.StatusCode.PERMISSION_DENIED
    st = ok(call(server, ADMIN + "Stats", pb.StatsRequest(), identities("root", "admin", None)))
    assert (st.held_calls, st.holds, st.pending_releases) == (2, 2, 1)
    # another legal identity approves: released, and the deferred erasure carried out
    done = ok(hold(server, "ApproveRelease", b, "a"))
    (o,) = done.outcomes
    assert o.changed and o.erased and o.erase_log_index >= 0
    info = ok(call(server, "/callvault.v1.Archive/GetCall", pb.GetCallRequest(call=ref("a")), a))
    assert info.state == "erased" and info.erase_reason == "DSAR 9" and not info.holds
    info = ok(call(server, "/callvault.v1.Archive/GetCall", pb.GetCallRequest(call=ref("b")), a))
    assert [h.name for h in info.holds] == ["CASE-17"] and not info.erase_pending
    # a hold on the erased call: refused, clearly; a request stops at it, naming the
    # calls it changed before
    late = hold(server, "PlaceHold", a, "a", reason="late")
    assert late.code == grpc.StatusCode.FAILED_PRECONDITION and "erased" in late.details
    part = hold(server, "PlaceHold", a, "c", "a", name="HR-2", reason="late")
    assert part.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "call a is erased" in part.details and "changed before it: c" in part.details
    ok(hold(server, "RequestRelease", a, "c", name="HR-2", reason="by mistake"))
    ok(hold(server, "ApproveRelease", b, "c", name="HR-2"))
    st = ok(call(server, ADMIN + "Stats", pb.StatsRequest(), identities("root", "admin", None)))
    assert (st.held_calls, st.holds, st.pending_releases) == (1, 1, 0)
    lst = json.loads(ok(call(server, LC + "ListHolds", pb.ListHoldsRequest(), a)).json)
    assert [(h["name"], [c["call_id"] for c in h["calls"]]) for h in lst["holds"]] == [
        ("CASE-17", ["b"])
    ]
    # the auditor may list, a qa may not
    aud = identities("aud-1", "auditor", "t1")
    assert ok(call(server, LC + "ListHolds", pb.ListHoldsRequest(name="CASE-17"), aud))
    denied = call(server, LC + "ListHolds", pb.ListHoldsRequest(), qa)
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    # the audit trail has each of them, with the identity and the call
    root = identities("root", "admin", None)
    entries = ok_stream(server, pb.AuditRequest(call_id="a", tenant="t1"), root)
    seen = [(e.method.rsplit("/", 1)[1], e.identity, e.outcome) for e in entries]
    assert ("PlaceHold", "legal-a", "OK") in seen
    assert ("RequestRelease", "legal-a", "OK") in seen
    assert ("ApproveRelease", "legal-a", "PERMISSION_DENIED") in seen
    assert ("ApproveRelease", "legal-b", "OK") in seen
    assert ("Erase", "admin-t1", "OK") in seen


def ok_stream(s: AccessServer, request: pb.AuditRequest, md: Metadata) -> list[pb.AuditEntry]:
    with grpc.insecure_channel(s.address) as ch:
        o = invoke(ch, ADMIN + "Audit", request, md)
    assert o.code == grpc.StatusCode.OK, o.details
    return list(o.replies)


def test_tenant_isolation(server: AccessServer, identities: MakeIdentity) -> None:
    t1 = identities("legal-a", "legal", "t1")
    t2 = identities("legal-t2", "legal", "t2")
    ok(hold(server, "PlaceHold", t1, "a", reason="s"))
    with grpc.insecure_channel(server.address) as ch:
        for method in ("PlaceHold", "RequestRelease", "ApproveRelease"):
            other = invoke(
                ch,
                LC + method,
                pb.HoldRequest(calls=[ref("a", "t1")], name="CASE-17", reason="r"),
                t2,
            )
            ghost = invoke(
                ch,
                LC + method,
                pb.HoldRequest(calls=[ref("ghost", "t1")], name="CASE-17", reason="r"),
                t2,
            )
            assert other.code == ghost.code == grpc.StatusCode.NOT_FOUND
            assert other.details == "no call a in tenant t1"
            assert ghost.details == "no call ghost in tenant t1"
        # a request that names an invisible call changes none of its calls
        mixed = invoke(
            ch,
            LC + "PlaceHold",
            pb.HoldRequest(calls=[ref("x"), ref("a", "t1")], name="T2-CASE", reason="r"),
            t2,
        )
        assert mixed.code == grpc.StatusCode.NOT_FOUND
    assert server.server.vault.get_call("x", tenant="t2").holds == {}
    mine = json.loads(ok(call(server, LC + "ListHolds", pb.ListHoldsRequest(), t2)).json)
    assert mine["holds"] == [] and mine["held_calls"] == 0
    theirs = json.loads(
        ok(call(server, LC + "ListHolds", pb.ListHoldsRequest(tenant="t1"), t2)).json
    )
    assert theirs["holds"] == []
    admin2 = identities("admin-t2", "admin", "t2")
    st = ok(call(server, ADMIN + "Stats", pb.StatsRequest(), admin2))
    assert st.tenant == "t2" and st.held_calls == 0
    admin1 = identities("admin-t1", "admin", "t1")
    st = ok(call(server, ADMIN + "Stats", pb.StatsRequest(), admin1))
    assert st.tenant == "t1" and st.held_calls == 1
    assert server.server.vault.get_call("x", tenant="t2").holds == {}


def test_hold_leaf_proven_against_checkpoint(
    server: AccessServer, identities: MakeIdentity
) -> None:
    a = identities("legal-a", "legal", "t1")
    r = ok(hold(server, "PlaceHold", a, "c", reason="subpoena"))
    (o,) = r.outcomes
    assert o.log_index >= 0 and len(o.link) == 32
    auditor = identities("aud-1", "auditor", "t1")
    cp = ok(call(server, INTEG + "GetCheckpoint", pb.GetCheckpointRequest(), auditor))
    signed = checkpoint.verify(cp.note, cp.verifier_key)  # the signature checks
    assert signed.size == cp.tree_size > o.log_index
    root = identities("root", "admin", None)  # a tenant identity asks proofs by call only
    proof = ok(
        call(
            server,
            INTEG + "GetInclusionProof",
            pb.InclusionProofRequest(leaf_index=o.log_index, tree_size=cp.tree_size),
            root,
        )
    )
    leaf = merkle.leaf_hash(lifecycle_leaf("t1", "c", o.link, T0))
    assert proof.leaf_hash == leaf
    merkle.verify_inclusion(o.log_index, cp.tree_size, leaf, list(proof.path), signed.root)
    # the link is the call's lifecycle head, which the seal chains to
    e = server.server.vault.get_call("c", tenant="t1")
    assert e.lifecycle_head == o.link.hex() and e.lifecycle_leaves == [o.log_index]


def test_cli_remote_two_identities(server: AccessServer, tmp_path: Path) -> None:
    def cli(name: str, *args: str, okay: bool = True) -> str:
        tok = token_for(name, "legal", "t1")
        p = run_cli("--server", server.address, "--token", tok, *args, ok=okay)
        return p.stdout + p.stderr

    out = cli("legal-a", "hold", "place", "a", "b", "--name", "CASE-17", "--reason", "subpoena")
    assert "a: hold CASE-17 placed" in out and "b: hold CASE-17 placed" in out
    out = cli("legal-a", "hold", "ls")
    assert "CASE-17: 2 call(s)" in out and "t1/a" in out and "by legal-a: subpoena" in out
    cli("legal-a", "hold", "release", "a", "--name", "CASE-17", "--reason", "settled")
    out = cli("legal-a", "hold", "approve-release", "a", "--name", "CASE-17", okay=False)
    assert "requested by legal-a" in out
    doc = json.loads(cli("legal-b", "hold", "ls", "--json"))
    assert doc["pending_releases"] == 1
    out = cli("legal-b", "hold", "approve-release", "a", "--name", "CASE-17")
    assert "a: hold CASE-17 released" in out
    # erase of the still-held b: deferred (admin token)
    tok = token_for("admin-t1", "admin", "t1")
    p = run_cli("--server", server.address, "--token", tok, "erase", "b", "--reason", "DSAR")
    assert p.stdout.startswith("b: deferred: held by CASE-17"), p.stdout
    assert server.server.vault.get_call("b", tenant="t1").state == "sealed"


def test_cli_local(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.import_call("a", [str(capture)])
    d = ("--data", str(data))
    p = run_cli(*d, "hold", "place", "a", "--name", "CASE-17", "--reason", "subpoena")
    assert p.stdout == "a: hold CASE-17 placed\n"
    p = run_cli(*d, "erase", "a", "--reason", "asked")
    assert p.stdout.startswith("a: deferred: held by CASE-17")
    p = run_cli(*d, "hold", "ls")
    assert "[erasure deferred]" in p.stdout and "by local:" in p.stdout
    run_cli(*d, "hold", "release", "a", "--name", "CASE-17", "--reason", "settled")
    # the same OS user cannot approve its own request
    p = run_cli(*d, "hold", "approve-release", "a", "--name", "CASE-17", ok=False)
    assert p.returncode == 1 and "approve as another user, or on a server" in p.stderr
    p = run_cli(*d, "hold", "place", "a", "--name", "bad name", "--reason", "x", ok=False)
    assert p.returncode == 1 and "hold name" in p.stderr
    with Vault.open(data) as v:
        e = v.get_call("a")
        assert e.state == "sealed" and e.pending_erase and "CASE-17" in e.holds
