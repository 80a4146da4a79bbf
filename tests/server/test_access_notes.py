"""What the servicers tell the RPC's audit context (access.context.note_*): the calls
each RPC touched, and the seconds and bytes of audio that Play, Export and GetBundle
sent; read where the interceptor hands every finished RPC to the audit sinks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb

from callvault.access.context import Rpc
from callvault.media import sample
from callvault.server.interceptors import IdentityInterceptor
from tests.server.access_fixtures import (
    AccessServer,
    MakeIdentity,
    Metadata,
    invoke,
    populate,
    serve,
)

P = "/callvault.v1."


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessServer]:
    tmp = tmp_path_factory.mktemp("notes")
    capture = tmp / "call.pcap"
    sample.demo_capture(capture, seconds=3.0)
    populate(tmp / "vault", capture)
    yield from serve(tmp / "vault")


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Rpc, str]]:
    """Every RPC as the audit sinks get it, with its outcome."""
    seen: list[tuple[Rpc, str]] = []
    original = IdentityInterceptor._finish

    def finish(self: IdentityInterceptor, rpc: Rpc, outcome: str) -> None:
        seen.append((rpc, outcome))
        original(self, rpc, outcome)

    monkeypatch.setattr(IdentityInterceptor, "_finish", finish)
    return seen


def call(world: AccessServer, method: str, req: object, md: Metadata) -> None:
    with grpc.insecure_channel(world.address) as ch:
        invoke(ch, P + method, req, md)


def ref(call_id: str, tenant: str = "") -> pb.CallRef:
    return pb.CallRef(tenant=tenant, call_id=call_id)


def test_audio_seconds_and_calls_are_noted(
    world: AccessServer, finished: list[tuple[Rpc, str]], identities: MakeIdentity
) -> None:
    qa = identities("qa-1", "qa", "t1")
    call(world, "Archive/GetCall", pb.GetCallRequest(call=ref("own")), qa)
    [(info_rpc, outcome)] = finished
    assert (info_rpc.calls, info_rpc.audio_seconds, outcome) == ([("t1", "own")], 0.0, "OK")
    finished.clear()
    call(world, "Archive/Play", pb.PlayRequest(call=ref("own"), format=pb.PCM), qa)
    [(play, outcome)] = finished
    assert outcome == "OK" and play.calls == [("t1", "own")]
    with grpc.insecure_channel(world.address) as ch:
        frames = invoke(ch, P + "Archive/GetCall", pb.GetCallRequest(call=ref("own")), qa)
    n = frames.replies[0].frames
    assert play.audio_seconds == pytest.approx(n * 0.02)
    assert play.audio_bytes == n * 160 * 2 * 2  # PCM16, two legs

    finished.clear()
    admin = identities("root-1", "admin", "t1") + [("callvault-reason", "ticket 9")]
    call(world, "Archive/Export", pb.ExportRequest(call=ref("own")), admin)
    call(world, "Integrity/GetBundle", pb.GetBundleRequest(call=ref("own")), admin)
    (export, e_out), (bundle, b_out) = finished
    assert (e_out, b_out) == ("OK", "OK")
    assert export.reason == bundle.reason == "ticket 9"
    assert export.audio_seconds == bundle.audio_seconds == pytest.approx(n * 0.02, abs=0.02)
    assert export.audio_bytes > 0 and bundle.audio_bytes > export.audio_bytes


def test_refusals_and_other_tenants_calls_are_noted(
    world: AccessServer, finished: list[tuple[Rpc, str]], identities: MakeIdentity
) -> None:
    qa = identities("qa-1", "qa", "t1")
    call(world, "Archive/Play", pb.PlayRequest(call=ref("foreign", "t2")), qa)
    call(world, "Archive/Play", pb.PlayRequest(call=ref("live")), qa)
    (foreign, f_out), (live, l_out) = finished
    assert (foreign.calls, f_out, foreign.audio_seconds) == ([("t2", "foreign")], "NOT_FOUND", 0)
    assert (live.calls, l_out, live.audio_bytes) == ([("t1", "live")], "PERMISSION_DENIED", 0)
    finished.clear()
    legal = identities("ann", "legal", "t1")
    call(
        world, "Archive/RequestExport", pb.RequestExportRequest(call=ref("own"), reason="r"), legal
    )
    [(req, _)] = finished
    assert req.calls == [("t1", "own")] and req.detail.startswith("export request xr-")
