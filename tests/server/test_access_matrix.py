"""The method x role matrix of docs/access.md, cell by cell, against a real server.

The expected cells are read from the table in docs/access.md (so the document and
the test cannot drift), checked against the interceptor's table
(PERMISSIONS/ROLE_PERMISSIONS), and every cell is driven through gRPC with an
identity of that role of tenant t1 (tests/server/access_fixtures.py: the one
place credentials come from). Allowed: neither PERMISSION_DENIED nor
UNAUTHENTICATED. Denied: PERMISSION_DENIED. Conditional cells are driven both
ways: with the condition (allowed) and without (refused).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault.access import audit
from callvault.access.identity import ROLES, Identity
from callvault.media import sample
from callvault.server.interceptors import PERMISSIONS, ROLE_PERMISSIONS, authorize
from tests.server.access_fixtures import (
    AGENT,
    OPEN_CALL,
    AccessServer,
    MakeIdentity,
    Metadata,
    Outcome,
    invoke,
    populate,
    request_of,
    serve,
    token_for,
)
from tests.servers import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "access.md"
PREFIX = "/callvault.v1."
DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
CELLS = ("yes", "no", "own", "sealed", "reason", "approval", "platform")
REASON = [("callvault-reason", "access matrix test")]


def read_matrix() -> tuple[list[str], dict[str, tuple[str, dict[str, str]]]]:
    """docs/access.md "The matrix": (roles in column order, method -> (permission,
    role -> cell))."""
    text = DOC.read_text()
    section = text.split("## The matrix", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[:2] == ["method", "permission"], header
    roles = header[2:]
    table: dict[str, tuple[str, dict[str, str]]] = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.fullmatch(r"`(\w+/\w+)`", cells[0])
        assert m, f"not a method cell: {cells[0]!r}"
        method = PREFIX + m.group(1)
        assert method not in table, f"{method} twice"
        assert all(c in CELLS for c in cells[2:]), line
        table[method] = (cells[1], dict(zip(roles, cells[2:], strict=True)))
    return roles, table


ROLE_COLUMNS, MATRIX = read_matrix()


def test_the_document_is_the_interceptors_table() -> None:
    """Every method the table names is in the document with its permission, every
    served method too, and each cell agrees with authorize()."""
    assert sorted(ROLE_COLUMNS) == sorted(ROLES)
    assert set(ROLE_PERMISSIONS) == set(ROLES)
    assert set(MATRIX) == set(PERMISSIONS)
    for svc in ("Ingest", "Archive", "Integrity", "Admin"):
        for name in pb.DESCRIPTOR.services_by_name[svc].methods_by_name:
            assert f"{PREFIX}{svc}/{name}" in MATRIX, f"{svc}/{name} is not in docs/access.md"
    for method, (perm, cells) in MATRIX.items():
        assert PERMISSIONS[method] == perm, method
        for role, cell in cells.items():
            who = Identity(f"{role}-1", role, "t1", "test")
            allowed = authorize(who, method) is None
            assert allowed == (cell != "no"), (method, role, cell)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    tmp = tmp_path_factory.mktemp("matrix")
    capture = tmp / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    populate(tmp / "vault", capture)
    yield from serve(tmp / "vault")


class Counting(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Counts every RPC this module's channel starts (the calls made, client side),
    for the audit trail's count (test_every_call_is_one_audit_entry); the SDK test's
    calls are added by hand."""

    def __init__(self) -> None:
        self.calls = 0

    def _count(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return continuation(details, request)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._count(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._count(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._count(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._count(continuation, details, requests)


COUNTING = Counting()


@pytest.fixture(scope="module")
def channel(world: AccessServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.address) as ch:
        yield grpc.intercept_channel(ch, COUNTING)


def ref(call_id: str, tenant: str = "") -> pb.CallRef:
    return pb.CallRef(tenant=tenant, call_id=call_id)


class Driver:
    """Builds each method's request (aimed at t1's calls) and calls it."""

    def __init__(self, channel: grpc.Channel, identities: MakeIdentity) -> None:
        self.channel = channel
        self.ids = identities

    def who(self, role: str, tenant: str | None = "t1") -> Metadata:
        name = AGENT if role == "agent" else f"{role}-1"
        return self.ids(name, role, tenant)

    def approved(self, call_id: str) -> str:
        """An export request of legal-1 for ``call_id``, approved by legal-2."""
        r = invoke(
            self.channel,
            PREFIX + "Archive/RequestExport",
            pb.RequestExportRequest(call=ref(call_id), reason="matrix"),
            self.ids("legal-1", "legal", "t1"),
        )
        assert r.code == grpc.StatusCode.OK, r.details
        rid = r.replies[0].id
        a = invoke(
            self.channel,
            PREFIX + "Archive/ApproveExport",
            pb.ApproveExportRequest(id=rid),
            self.ids("legal-2", "legal", "t1"),
        )
        assert a.code == grpc.StatusCode.OK, a.details
        return str(rid)

    def pending(self) -> str:
        """A pending export request of legal-2 (so that legal-1 or an admin may approve)."""
        r = invoke(
            self.channel,
            PREFIX + "Archive/RequestExport",
            pb.RequestExportRequest(call=ref("own"), reason="matrix"),
            self.ids("legal-2", "legal", "t1"),
        )
        assert r.code == grpc.StatusCode.OK, r.details
        return str(r.replies[0].id)

    def request(self, method: str, call_id: str = "own", approval: str = "") -> Any:
        name = method.rsplit("/", 1)[1]
        if name in ("Record", "RecordCalls"):
            return []  # a stream that ends at once: admitted, then nothing to record
        req = request_of(method)
        fields = req.DESCRIPTOR.fields_by_name
        if "call" in fields and fields["call"].message_type is pb.CallRef.DESCRIPTOR:
            req.call.CopyFrom(ref(call_id))
        if name == "Play":
            req.format = pb.PCM
        if name in ("RequestExport", "Erase"):
            req.reason = "matrix"
        if name == "Erase":
            req.call.CopyFrom(ref("victim"))
        if name == "ApproveExport":
            req.id = self.pending()
        if name == "Verify":
            req.call_ids.append(call_id)
        if name == "GetConsistencyProof":
            req.old_size = 1
        if approval:
            req.approval = approval
        return req

    def call(self, method: str, md: Metadata, **kw: Any) -> Outcome:
        return invoke(self.channel, method, self.request(method, **kw), md)


def allowed(o: Outcome, what: str) -> None:
    assert o.code not in DENIED, f"{what}: refused {o.code.name}: {o.details}"


def denied(o: Outcome, what: str) -> None:
    assert o.code == grpc.StatusCode.PERMISSION_DENIED, f"{what}: {o.code.name} {o.details}"


@pytest.mark.parametrize("role", ROLE_COLUMNS)
@pytest.mark.parametrize("method", sorted(MATRIX))
def test_cell(
    method: str,
    role: str,
    channel: grpc.Channel,
    identities: MakeIdentity,
) -> None:
    cell = MATRIX[method][1][role]
    d = Driver(channel, identities)
    what = f"{method} as {role} ({cell})"
    md = d.who(role)
    if cell == "yes":
        allowed(d.call(method, md), what)
    elif cell == "no":
        denied(d.call(method, md), what)
    elif cell == "reason":
        denied(d.call(method, md), what + " without a reason")
        allowed(d.call(method, md + REASON), what + " with a reason")
    elif cell == "approval":
        denied(d.call(method, md), what + " without an approval")
        allowed(d.call(method, md, approval=d.approved("own")), what + " with an approval")
    elif cell == "sealed":
        allowed(d.call(method, md), what + " of a sealed call")
        denied(d.call(method, md, call_id=OPEN_CALL[1]), what + " of an open call")
    elif cell == "platform":
        denied(d.call(method, md + REASON), what + " by a tenant identity")
        allowed(d.call(method, d.who(role, None) + REASON), what + " by a platform identity")
    elif cell == "own":
        o = d.call(method, md)
        allowed(o, what)
        if method.endswith("/GetCall"):
            assert o.replies[0].agent == AGENT
            other = d.call(method, md, call_id="other")
            ghost = d.call(method, md, call_id="ghost")
            assert other.code == ghost.code == grpc.StatusCode.NOT_FOUND
            assert other.details == "no call other in tenant t1"
            assert ghost.details == "no call ghost in tenant t1"
        else:
            infos = o.replies if method.endswith("/Search") else o.replies[0].calls
            assert {c.call_id for c in infos} >= {"own"}
            assert {c.agent for c in infos} == {AGENT}
    else:
        raise AssertionError(f"unknown cell {cell}")


def test_no_credentials_is_unauthenticated(channel: grpc.Channel) -> None:
    o = invoke(channel, PREFIX + "Archive/GetCall", pb.GetCallRequest(call=ref("own")), [])
    assert o.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_qa_plays_audio_and_the_supervisor_listens_live(
    channel: grpc.Channel,
    identities: MakeIdentity,
) -> None:
    """Allowed audio is audio: qa's Play of a sealed call returns the call's frames;
    the supervisor's Play of the open call is allowed (nothing durable yet)."""
    d = Driver(channel, identities)
    info = d.call(PREFIX + "Archive/GetCall", d.who("qa")).replies[0]
    o = d.call(PREFIX + "Archive/Play", d.who("qa"))
    assert o.code == grpc.StatusCode.OK
    assert info.frames > 100 and sum(c.frames for c in o.replies) == info.frames
    live = d.call(PREFIX + "Archive/Play", d.who("supervisor"), call_id=OPEN_CALL[1])
    assert live.code == grpc.StatusCode.OK, live.details


@pytest.mark.parametrize("role", ROLE_COLUMNS)
def test_the_sdk_with_a_token_of_each_role(role: str, world: AccessServer, tmp_path: Path) -> None:
    """The SDK's own credential path (``Client(address, token=...)``, as a user runs
    it) for each role over the SDK's verbs, refused or allowed as the matrix says
    (without a reason or an approval: those cells are refusals here)."""
    from callvault_client import Client
    from callvault_client.errors import CallvaultClientError, PermissionDenied

    name = AGENT if role == "agent" else f"{role}-sdk"
    token = token_for(name, role, "t1")
    calls: dict[str, Any] = {
        "Archive/GetCall": lambda c: c.get_call("own", tenant="t1"),
        "Archive/Search": lambda c: list(c.search(tenant="t1")),
        "Archive/Play": lambda c: list(c.play("own", tenant="t1", format="pcm")),
        "Archive/Export": lambda c: c.export("own", tmp_path / "own.ogg", tenant="t1"),
        "Integrity/GetCheckpoint": lambda c: c.get_checkpoint(),
        "Integrity/Verify": lambda c: list(c.verify(["own"], tenant="t1")),
        "Admin/Stats": lambda c: c.stats(),
        "Admin/Audit": lambda c: list(c.audit(limit=5)),
    }
    with Client(world.address, token=token) as c:
        for method, call in calls.items():
            cell = MATRIX[PREFIX + method][1][role]
            COUNTING.calls += 1  # one RPC, for the audit count (no retry: none is UNAVAILABLE)
            try:
                call(c)
            except PermissionDenied as e:
                assert cell in ("no", "reason", "approval"), f"{method} as {role}: {e}"
                continue
            except CallvaultClientError as e:  # any other refusal is a test failure
                raise AssertionError(f"{method} as {role} ({cell}): {e}") from e
            assert cell in ("yes", "own", "sealed"), f"{method} as {role} ({cell}) allowed"


def test_every_call_is_one_audit_entry_and_tampering_is_caught(world: AccessServer) -> None:
    """Last in this module: every RPC the matrix made (allowed or refused, counted on
    the client's side) is exactly one entry of the server's audit trail, and a byte
    changed in one entry is named by `callvault audit verify`."""
    assert COUNTING.calls > 8 * len(MATRIX)  # the whole matrix ran before this test
    world.server.stop()  # the trail synced and its head committed to the log
    entries = [e for e in audit.read_entries(world.data / "audit") if e.doc["kind"] == "rpc"]
    assert len(entries) == COUNTING.calls
    ok = run_cli("--data", str(world.data), "audit", "verify")
    assert "audit trail OK" in ok.stdout
    victim = entries[len(entries) // 2]
    trail = world.data / "audit" / "trail"
    raw = bytearray(trail.read_bytes())
    at = raw.index(b'"method"', victim.offset) + len('"method":"')
    raw[at + 1] ^= 0x01  # one bit of the method's name
    trail.write_bytes(bytes(raw))
    bad = run_cli("--data", str(world.data), "audit", "verify", ok=False)
    assert bad.returncode == 1
    assert f"first bad entry: {victim.doc['seq']}" in bad.stdout, bad.stdout
