"""`callvault serve` over the wire: a real server process on a loopback port,
real RocksDB, real libopus; requests through the generated stubs."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from callvault.media import sample
from callvault.vault import Vault
from tests.rtpfeed import Feed, capture_feed
from tests.servers import Proc, start_server


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=12.0)
    return path


@pytest.fixture(scope="module")
def reference(
    capture: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[bytes, list[int]]]:
    """What a local `callvault import` of the capture stores: per leg, packets."""
    with Vault.open(tmp_path_factory.mktemp("ref") / "vault") as v:
        v.import_call("ref", [str(capture)])
        return [(d, ln.tolist()) for d, ln in v.read_packets("ref")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    srv = start_server(tmp_path / "data")
    yield srv
    srv.stop()


def stored(data: Path, call_id: str) -> list[tuple[bytes, list[int]]]:
    with Vault.open(data) as v:
        assert v.verify_call(call_id) == []
        return [(d, ln.tolist()) for d, ln in v.read_packets(call_id)]


class Stream:
    """An interactive Record stream: put requests, read replies."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[pb.IngestRequest | None] = queue.Queue()
        self.replies = pbg.IngestStub(self.channel).Record(iter(self.requests.get, None))

    def send(self, req: pb.IngestRequest) -> None:
        self.requests.put(req)

    def next(self) -> pb.IngestReply:
        return next(self.replies)

    def until(self, kind: str) -> pb.IngestReply:
        while True:
            r = self.next()
            if r.WhichOneof("msg") == kind:
                return r

    def start(self, start: pb.IngestRequest) -> pb.Started:
        """Send the CallStart; returns the server's Started."""
        self.send(start)
        return self.until("started").started

    def send_acked(self, batches: list[pb.RtpBatch]) -> pb.Ack:
        """Send the call's first batches (seq 0 on); returns the Ack of the last one."""
        for b in batches:
            self.send(pb.IngestRequest(batch=b))
        ack = self.until("ack").ack
        while ack.seq < len(batches) - 1:
            ack = self.until("ack").ack
        return ack

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def record(address: str, feed: Feed, call_id: str, **kw: object) -> list[pb.IngestReply]:
    with grpc.insecure_channel(address) as ch:
        return list(pbg.IngestStub(ch).Record(feed.requests(call_id, **kw)))  # type: ignore[arg-type]


def test_recorded_call_equals_local_import(
    server: Proc, capture: Path, reference: list[tuple[bytes, list[int]]]
) -> None:
    feed = capture_feed(capture)
    replies = record(server.address, feed, "c1", agent="alex")
    kinds = [r.WhichOneof("msg") for r in replies]
    assert kinds[0] == "started" and kinds[-1] == "sealed"
    acks = [r.ack for r in replies if r.WhichOneof("msg") == "ack"]
    assert acks[-1].seq == len(feed.batches) - 1
    assert [a.seq for a in acks] == sorted(a.seq for a in acks)
    assert len(acks[-1].chain_head) == 32
    sealed = replies[-1].sealed
    assert sealed.frames == len(reference[0][1]) - 1  # minus the encoder flush packet
    again = record(server.address, feed, "c1")  # a CallStart for a sealed call
    assert [r.WhichOneof("msg") for r in again] == ["started", "sealed"]
    assert again[1].sealed == sealed  # the same seal, frames and log index
    server.stop()
    assert stored(server.data or Path(), "c1") == reference


def test_resent_batches_are_skipped_after_a_reconnect(
    server: Proc, capture: Path, reference: list[tuple[bytes, list[int]]]
) -> None:
    feed = capture_feed(capture)
    half = len(feed.batches) // 2
    s = Stream(server.address)
    assert s.start(feed.start("c2")).resume_from_seq == 0
    s.send_acked(feed.batches[:half])
    s.close()  # the stream breaks; the call stays live on the server
    replies = record(server.address, feed, "c2")  # everything again, from seq 0
    assert replies[0].started.resumed and replies[0].started.resume_from_seq == half
    assert replies[-1].WhichOneof("msg") == "sealed"
    server.stop()
    assert stored(server.data or Path(), "c2") == reference


def test_killed_server_resumes_by_replay(
    tmp_path: Path, capture: Path, reference: list[tuple[bytes, list[int]]]
) -> None:
    srv = start_server(tmp_path / "data")
    feed = capture_feed(capture)
    s = Stream(srv.address)
    s.start(feed.start("c3"))
    half = len(feed.batches) * 2 // 3
    ack = s.send_acked(feed.batches[:half])
    assert min(ack.durable_frames) >= 50  # some records were durable before the kill
    srv.kill()
    s.close()
    srv = start_server(tmp_path / "data", port=srv.port)
    try:
        replies = record(srv.address, feed, "c3")
        st = replies[0].started
        assert st.resumed and st.resume_from_seq == 0  # a restart replays from the start
        assert replies[-1].WhichOneof("msg") == "sealed"
    finally:
        srv.stop()
    assert stored(tmp_path / "data", "c3") == reference


def test_sigterm_makes_encoded_audio_durable(
    tmp_path: Path, capture: Path, reference: list[tuple[bytes, list[int]]]
) -> None:
    srv = start_server(tmp_path / "data")
    feed = capture_feed(capture)
    s = Stream(srv.address)
    s.start(feed.start("c4"))
    half = len(feed.batches) // 2
    ack = s.send_acked(feed.batches[:half])
    before = list(ack.durable_frames)
    assert srv.stop(signal.SIGTERM) == 0
    s.close()
    with Vault.open(tmp_path / "data") as v:
        after = v.durable_frames("c4")
        assert v.get_call("c4").state == "open"
    # every frame encoded by then was stored (not only whole 50-frame records)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert any(a % 50 for a in after)
    srv = start_server(tmp_path / "data", port=srv.port)
    try:
        replies = record(srv.address, feed, "c4")
        assert replies[-1].WhichOneof("msg") == "sealed"
    finally:
        srv.stop()
    assert stored(tmp_path / "data", "c4") == reference


def test_search_get_call_and_proofs(server: Proc, capture: Path) -> None:
    feed = capture_feed(capture)
    record(server.address, feed, "s1", agent="alex", direction="inbound", skill_group="billing")
    record(server.address, feed, "s2", agent="sam", direction="outbound")
    with grpc.insecure_channel(server.address) as ch:
        a = pbg.ArchiveStub(ch)
        assert [c.call_id for c in a.Search(pb.SearchRequest())] == ["s1", "s2"]
        assert [c.call_id for c in a.Search(pb.SearchRequest(agent="sam"))] == ["s2"]
        assert [c.call_id for c in a.Search(pb.SearchRequest(direction="inbound"))] == ["s1"]
        assert [c.call_id for c in a.Search(pb.SearchRequest(min_duration_ms=60_000))] == []
        assert len(list(a.Search(pb.SearchRequest(max_duration_ms=60_000)))) == 2
        assert len(list(a.Search(pb.SearchRequest(limit=1)))) == 1
        info = a.GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="s1"), include_summary=True))
        assert info.state == "sealed" and info.skill_group == "billing"
        assert info.frames == (info.end_us - info.start_us) // 20_000
        summary = json.loads(info.summary_json)
        assert [leg["leg"] for leg in summary["legs"]] == ["agent", "customer"]
        integ = pbg.IntegrityStub(ch)
        cp = integ.GetCheckpoint(pb.GetCheckpointRequest())
        # the two seals, then the audit trail's head (leaf kind 4: docs/format.md 8.12)
        assert cp.tree_size == 3 and cp.note.startswith("callvault\n3\n")
        proof = integ.GetInclusionProof(pb.InclusionProofRequest(call=pb.CallRef(call_id="s2")))
        assert proof.leaf_index == 1 and proof.root_hash == cp.root_hash
        from callvault.integrity import merkle

        merkle.verify_inclusion(
            proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.path), proof.root_hash
        )
        cons = integ.GetConsistencyProof(pb.ConsistencyProofRequest(old_size=1))
        assert cons.new_root == cp.root_hash
        merkle.verify_consistency(1, 3, cons.old_root, cons.new_root, list(cons.path))
        results = list(integ.Verify(pb.VerifyRequest(all=True)))
        assert [(r.what, r.ok) for r in results] == [
            ("segments", True),
            ("call s1", True),
            ("call s2", True),
        ]
        files = {
            c.name for c in integ.GetBundle(pb.GetBundleRequest(call=pb.CallRef(call_id="s1")))
        }
        assert {"manifest.json", "call.ogg", "proof.json", "checkpoint.txt"} <= files
        st = pbg.AdminStub(ch).Stats(pb.StatsRequest())
        # and a second audit leaf, made by the bundle's checkpoint
        assert st.calls == 2 and st.open_calls == 0 and st.log_size == 4
        assert st.packets_total == 2 * sum(len(b.lengths) for b in feed.batches)
        assert st.stored_bytes > 0 and st.free_disk_bytes > 0
        # the interceptor chain's method log
        assert st.rpcs["/callvault.v1.Ingest/Record OK"] == 2
        assert st.rpcs["/callvault.v1.Archive/Search OK"] == 6
        assert st.streams == 1  # this Stats call


def test_play_pcm_matches_the_export(server: Proc, capture: Path, tmp_path: Path) -> None:
    feed = capture_feed(capture)
    record(server.address, feed, "p1")
    with grpc.insecure_channel(server.address) as ch:
        a = pbg.ArchiveStub(ch)
        chunks = list(a.Play(pb.PlayRequest(call=pb.CallRef(call_id="p1"), format=pb.PCM)))
        wav = b"".join(
            c.data for c in a.Export(pb.ExportRequest(call=pb.CallRef(call_id="p1"), format=pb.WAV))
        )
        part = list(
            a.Play(
                pb.PlayRequest(
                    call=pb.CallRef(call_id="p1"),
                    from_ms=2000,
                    to_ms=4000,
                    format=pb.OPUS,
                    frames_per_chunk=7,
                )
            )
        )
    frames = sum(c.frames for c in chunks)
    pcm = [np.frombuffer(b"".join(c.legs[g].data for c in chunks), "<i2") for g in (0, 1)]
    assert all(len(p) == frames * 160 for p in pcm)
    body = np.frombuffer(wav[44:], "<i2").reshape(-1, 2)
    assert len(body) == frames * 160
    assert np.array_equal(body[:, 0], pcm[0]) and np.array_equal(body[:, 1], pcm[1])
    assert part[0].first_frame == 100 and all(c.frames <= 7 for c in part)
    assert [c.first_frame for c in part] == list(range(100, 100 + 7 * len(part), 7))


def test_play_follows_a_call_being_recorded(server: Proc, capture: Path) -> None:
    feed = capture_feed(capture)
    s = Stream(server.address)
    s.start(feed.start("live"))
    half = len(feed.batches) // 2
    for b in feed.batches[:half]:
        s.send(pb.IngestRequest(batch=b))
    while min(s.until("ack").ack.durable_frames) < 100:
        pass
    got: list[pb.PlayChunk] = []
    ch = grpc.insecure_channel(server.address)
    listener = threading.Thread(
        target=lambda: got.extend(
            pbg.ArchiveStub(ch).Play(
                pb.PlayRequest(call=pb.CallRef(call_id="live"), follow=True), timeout=60
            )
        )
    )
    listener.start()
    time.sleep(1.0)
    assert got and all(c.live for c in got)  # heard while recording
    for b in feed.batches[half:]:
        s.send(pb.IngestRequest(batch=b))
    s.send(pb.IngestRequest(end=pb.CallEnd(batches=len(feed.batches))))
    sealed = s.until("sealed").sealed
    listener.join(30)
    assert not listener.is_alive()  # the follow ended with the seal
    s.close()
    ch.close()
    frames = [c.first_frame for c in got]
    assert frames == sorted(frames) and frames[0] == 0
    assert sum(c.frames for c in got) == sealed.frames + 1  # + the encoder flush packet
    assert got[0].live  # the stream's end, not a flag, says the call ended
    server.stop()
    data = b"".join(c.legs[0].data for c in got)
    assert data == stored(server.data or Path(), "live")[0][0]


# -- hostile and malformed requests --------------------------------------------------


def status_of(fn: object) -> tuple[grpc.StatusCode, str]:
    try:
        r = fn()  # type: ignore[operator]
        if isinstance(r, Iterator):
            list(r)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    raise AssertionError("no error")


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


def test_malformed_requests_get_clear_errors(server: Proc, capture: Path) -> None:
    feed = capture_feed(capture)
    b0 = feed.batches[0]
    ch = grpc.insecure_channel(server.address)
    ingest = pbg.IngestStub(ch)

    def stream(*reqs: pb.IngestRequest) -> object:
        return lambda: ingest.Record(iter(reqs), timeout=30)

    def batch(**kw: object) -> pb.IngestRequest:
        fields = {
            "seq": 0,
            "leg": 0,
            "packets": b0.packets,
            "lengths": list(b0.lengths),
            "arrival_us": list(b0.arrival_us),
            **kw,
        }
        return pb.IngestRequest(batch=pb.RtpBatch(**fields))  # type: ignore[arg-type]

    start = feed.start("bad")
    cases: list[tuple[object, grpc.StatusCode, str]] = [
        (
            stream(pb.IngestRequest(batch=b0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "first message of a Record stream must be a CallStart",
        ),
        (
            stream(
                pb.IngestRequest(start=pb.CallStart(call_id="x y", legs=[pb.LegSpec(name="a")]))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "call_id 'x y'",
        ),
        (
            stream(pb.IngestRequest(start=pb.CallStart(call_id="nolegs"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "1 or 2 legs",
        ),
        (stream(start, batch(lengths=[])), grpc.StatusCode.INVALID_ARGUMENT, "no packets"),
        (
            stream(start, batch(lengths=[5] * len(b0.lengths))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "add up to",
        ),
        (stream(start, batch(arrival_us=[1])), grpc.StatusCode.INVALID_ARGUMENT, "arrival times"),
        (stream(start, batch(leg=7)), grpc.StatusCode.INVALID_ARGUMENT, "leg 7 does not exist"),
        (stream(start, batch(seq=5)), grpc.StatusCode.FAILED_PRECONDITION, "batch 0 is next"),
        (
            stream(start, batch(), pb.IngestRequest(end=pb.CallEnd(batches=9))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "9 batches were sent",
        ),
        (stream(start, start), grpc.StatusCode.INVALID_ARGUMENT, "a second CallStart"),
        (
            lambda: pbg.ArchiveStub(ch).GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="nope"))),
            grpc.StatusCode.NOT_FOUND,
            "no call nope",
        ),
        (
            lambda: pbg.ArchiveStub(ch).GetCall(pb.GetCallRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "call_id is required",
        ),
        (
            lambda: pbg.ArchiveStub(ch).Export(
                pb.ExportRequest(call=pb.CallRef(call_id="bad"), format=pb.PCM)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "OGG or WAV",
        ),
        (
            lambda: pbg.ArchiveStub(ch).Export(pb.ExportRequest(call=pb.CallRef(call_id="bad"))),
            grpc.StatusCode.FAILED_PRECONDITION,
            "only sealed calls",
        ),
        (
            lambda: pbg.IntegrityStub(ch).GetConsistencyProof(
                pb.ConsistencyProofRequest(old_size=5)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "consistency from size 5",
        ),
        (
            lambda: pbg.AdminStub(ch).Erase(pb.EraseRequest(call=pb.CallRef(call_id="bad"))),
            grpc.StatusCode.FAILED_PRECONDITION,
            "still being recorded",
        ),
        # wrong types: bytes that are not a GetCallRequest at all
        (
            lambda: ch.unary_unary("/callvault.v1.Archive/GetCall")(b"\xff\xff\xff\xff"),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid protobuf message",
        ),
        (
            lambda: ch.unary_unary("/callvault.v1.Archive/NoSuchMethod")(b""),  # type: ignore[arg-type]
            grpc.StatusCode.UNIMPLEMENTED,
            "",
        ),
    ]
    for fn, code, text in cases:
        got, details = status_of(fn)
        assert (got, text in details) == (code, True), (code, text, got, details)
    assert serving(server.address)
    ch.close()


def test_limits_and_a_stream_that_never_ends(tmp_path: Path, capture: Path) -> None:
    cfg = tmp_path / "server.json"
    cfg.write_text(
        json.dumps(
            {
                "max_message_bytes": 64 << 10,
                "ingest_idle_s": 2,
                "max_concurrent_rpcs": 3,
                "workers": 8,
            }
        )
    )
    srv = start_server(tmp_path / "data", args=("--config", str(cfg)))
    try:
        feed = capture_feed(capture)
        ch = grpc.insecure_channel(srv.address)
        ingest = pbg.IngestStub(ch)
        big = pb.RtpBatch(
            seq=0, leg=0, packets=b"\x80" * (100 << 10), lengths=[100 << 10], arrival_us=[1]
        )
        code, _ = status_of(
            lambda: ingest.Record(iter([feed.start("big"), pb.IngestRequest(batch=big)]))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a stream that starts and then says nothing: closed after the idle limit
        s = Stream(srv.address)
        s.start(feed.start("idle"))
        with pytest.raises(grpc.RpcError) as e:
            s.next()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no message for 2 s" in (e.value.details() or "")
        s.close()
        # more streams than allowed: the extra one is refused, the others go on
        held = [Stream(srv.address) for _ in range(3)]
        for i, h in enumerate(held):
            h.start(feed.start(f"held{i}"))
        code, _ = status_of(lambda: pbg.AdminStub(ch).Stats(pb.StatsRequest()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for h in held:
            h.close()
        time.sleep(0.5)
        assert serving(srv.address)
        ch.close()
    finally:
        srv.stop()


def test_health_and_reflection(server: Proc) -> None:
    with grpc.insecure_channel(server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", "callvault.v1.Ingest", "callvault.v1.Archive"):
            assert (
                h.Check(health_pb2.HealthCheckRequest(service=name)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        r = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(
            r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {
            "callvault.v1.Ingest",
            "callvault.v1.Archive",
            "callvault.v1.Integrity",
            "callvault.v1.Admin",
            "grpc.health.v1.Health",
        } <= names


def test_sigterm_turns_health_not_serving_and_exits(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    assert srv.stop(signal.SIGTERM, timeout=30) == 0
    assert "shutting down" in srv.output()


def test_call_info_carries_erasure_in_fields_not_extra(server: Proc, capture: Path) -> None:
    """CallInfo.extra holds only the caller's metadata; an erasure has its own fields
    (regression: erased_us, erase_reason, manifest_ref... reached clients as extra)."""
    record(server.address, capture_feed(capture), "x1", agent="alex")
    with grpc.insecure_channel(server.address) as ch:
        a = pbg.ArchiveStub(ch)
        info = a.GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="x1")))
        assert dict(info.extra) == {} and info.erased_us == 0 and info.erase_log_index == -1
        reply = pbg.AdminStub(ch).Erase(
            pb.EraseRequest(call=pb.CallRef(call_id="x1"), reason="retention")
        )
        info = a.GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="x1")))
        assert info.state == "erased" and dict(info.extra) == {}
        assert info.erase_reason == "retention" and info.erased_us >= info.end_us > 0
        assert info.erase_log_index == reply.log_index == info.log_index + 1
