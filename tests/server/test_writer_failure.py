"""A call in progress when the vault's segment writer fails (issue 9, follow-up): a real
`callvault serve` on loopback whose segments directory is renamed away mid-call (the
next segment cannot be created: the writer fails for good) and back.

While the writer is down the call's stream gets UNAVAILABLE (the SDK's Recording
reconnects and keeps its batches); once the writer is reopened the call is resumed
from what was stored and the client's resend completes it: every frame sent, nothing
acknowledged lost, the call verifies."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from grpc_health.v1 import health_pb2

from callvault.media import sample
from callvault.vault import Vault
from tests.rtpfeed import Feed, Packets, capture_feed, imported_packets
from tests.server.test_limits import eventually, health
from tests.server.test_server import Stream, status_of
from tests.servers import Proc, run_cli, start_server

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=8.0)
    return path


@pytest.fixture(scope="module")
def feed(capture: Path) -> Feed:
    return capture_feed(capture)


@pytest.fixture(scope="module")
def reference(capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Packets:
    """What a local import of the capture stores: per leg, its Opus packets."""
    return imported_packets(capture, tmp_path_factory.mktemp("ref") / "vault")


def serve(tmp_path: Path) -> Proc:
    # small segments: every record or two needs a new segment file, whose creation
    # fails while the directory is away
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"housekeeping_s": 0.2, "segment_bytes": 4096}))
    return start_server(tmp_path / "data", args=("--config", str(cfg)))


def stored(data: Path, call_id: str) -> Packets:
    with Vault.open(data, read_only=True) as v:
        assert v.verify_call(call_id) == []
        return [(d, ln.tolist()) for d, ln in v.read_packets(call_id)]


def test_a_call_recorded_across_a_writer_failure_keeps_every_frame(
    tmp_path: Path, feed: Feed, reference: Packets
) -> None:
    srv = serve(tmp_path)
    seg = tmp_path / "data" / "segments"
    away = tmp_path / "data" / "segments.away"
    half = len(feed.batches) // 2
    lost: list[str] = []
    try:
        with Client(srv.address) as client:
            start = feed.start("WF1").start
            start.recording_id = "rec-WF1"
            rec = client.record_from(
                start,
                reconnect_timeout=120,
                on_lost=lambda e, _delay: lost.append(f"{type(e).__name__}: {e}"),
            )
            for b in feed.batches[:half]:
                rec.send(b.leg, b.packets, list(b.lengths), list(b.arrival_us))
            assert rec.acks.wait(half - 1, 60)
            acked = rec.acks.durable_frames
            assert min(acked) >= 50  # records were durable before the failure
            seg.rename(away)  # the next segment cannot be created: the writer fails
            for b in feed.batches[half:]:
                rec.send(b.leg, b.packets, list(b.lengths), list(b.arrival_us))
            eventually(lambda: health(srv.address) == NOT_SERVING)
            eventually(lambda: bool(lost))  # the stream was lost (UNAVAILABLE)
            assert rec.sealed is None
            away.rename(seg)  # the cause is gone: the writer reopens
            eventually(lambda: health(srv.address) == SERVING)
            sealed = rec.end(timeout=120)
        assert rec.reconnects >= 1
        assert all("Unavailable" in why for why in lost), lost
        assert any("segment writer failed" in why for why in lost), lost
        assert sealed.frames == len(reference[0][1]) - 1  # minus the encoder flush packet
        assert "resumed from what was stored" in srv.output()
        # the call as stored equals what an uninterrupted import stores, and verifies
        assert stored(tmp_path / "data", "WF1") == reference
        out = run_cli("--server", srv.address, "verify", "WF1")
        assert "OK" in out.stdout + out.stderr
    finally:
        if away.exists():
            away.rename(seg)
        srv.stop()


def test_a_raw_stream_gets_unavailable_and_resumes_from_started(
    tmp_path: Path, feed: Feed, reference: Packets
) -> None:
    srv = serve(tmp_path)
    seg = tmp_path / "data" / "segments"
    away = tmp_path / "data" / "segments.away"
    half = len(feed.batches) // 2
    try:
        s = Stream(srv.address)
        s.start(feed.start("WF2"))
        ack = s.send_acked(feed.batches[:half])
        seg.rename(away)
        for b in feed.batches[half:]:
            s.send(pb.IngestRequest(batch=b))
        with pytest.raises(grpc.RpcError) as err:
            while True:
                s.next()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing acknowledged is lost" in str(err.value.details())
        s.close()
        eventually(lambda: health(srv.address) == NOT_SERVING)
        # while the writer is down a reconnect is refused with UNAVAILABLE too
        with grpc.insecure_channel(srv.address) as ch:
            code, details = status_of(
                lambda: pbg.IngestStub(ch).Record(iter([feed.start("WF2")]), timeout=30)
            )
        assert code == grpc.StatusCode.UNAVAILABLE, details
        away.rename(seg)
        eventually(lambda: health(srv.address) == SERVING)
        with grpc.insecure_channel(srv.address) as ch:
            replies = list(pbg.IngestStub(ch).Record(feed.requests("WF2"), timeout=120))
        st = replies[0].started
        assert st.resumed and st.resume_from_seq == 0  # replayed from what was stored
        acks = [r.ack for r in replies if r.WhichOneof("msg") == "ack"]
        # nothing acknowledged before the failure was lost
        assert all(a >= b for a, b in zip(acks[0].durable_frames, ack.durable_frames, strict=True))
        assert replies[-1].WhichOneof("msg") == "sealed"
        assert stored(tmp_path / "data", "WF2") == reference
    finally:
        if away.exists():
            away.rename(seg)
        srv.stop()


def test_a_quiet_call_whose_writer_broke_is_told_and_resumes(
    tmp_path: Path, feed: Feed, reference: Packets
) -> None:
    """A call that sends nothing while another call's write fails the writer: once the
    writer is reopened its CallWriter is broken; its stream is told (UNAVAILABLE)
    without having to send, and its resend completes it."""
    srv = serve(tmp_path)
    seg = tmp_path / "data" / "segments"
    away = tmp_path / "data" / "segments.away"
    try:
        s = Stream(srv.address)
        s.start(feed.start("Q1"))
        s.send_acked(feed.batches[: len(feed.batches) // 2])
        seg.rename(away)
        with grpc.insecure_channel(srv.address) as ch:  # another call fails the writer
            code, _ = status_of(lambda: pbg.IngestStub(ch).Record(feed.requests("W"), timeout=60))
        assert code == grpc.StatusCode.UNAVAILABLE
        eventually(lambda: health(srv.address) == NOT_SERVING)
        away.rename(seg)
        eventually(lambda: health(srv.address) == SERVING)
        with pytest.raises(grpc.RpcError) as err:
            while True:
                s.next()  # nothing sent: the server ends the stream by itself
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "call Q1: storing it failed" in str(err.value.details())
        s.close()
        with grpc.insecure_channel(srv.address) as ch:
            replies = list(pbg.IngestStub(ch).Record(feed.requests("Q1"), timeout=120))
        assert replies[0].started.resumed and replies[0].started.resume_from_seq == 0
        assert replies[-1].WhichOneof("msg") == "sealed"
        assert stored(tmp_path / "data", "Q1") == reference
    finally:
        if away.exists():
            away.rename(seg)
        srv.stop()
