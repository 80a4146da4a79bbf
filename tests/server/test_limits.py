"""Ingest against hostile and unlucky clients (issue 9, sections 0 and 1, server side):
a real `callvault serve` on loopback, raw gRPC clients through the generated stubs.

Each test replays a reported problem: CallStart-only streams that leaked open calls
for good (and blocked Reindex), metadata of megabytes kept in memory, NUL and "."/".."
accepted as ids, a Python exception text as UNKNOWN, health SERVING after the
segment writer failed, and a reused call id answered with the first call's seal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callvault import ids
from callvault.media import sample
from tests.rtpfeed import Feed, capture_feed
from tests.server.test_server import Stream, status_of
from tests.servers import Proc, run_cli, start_server


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=6.0)
    return path


@pytest.fixture(scope="module")
def feed(capture: Path) -> Feed:
    return capture_feed(capture)


def serve(tmp_path: Path, **config: object) -> Proc:
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"housekeeping_s": 0.2, **config}))
    return start_server(tmp_path / "data", args=("--config", str(cfg)))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    srv = serve(tmp_path, call_idle_s=1, resume_s=2, max_open_calls=4)
    yield srv
    srv.stop()


def stats(address: str) -> pb.StatsReply:
    with grpc.insecure_channel(address) as ch:
        r: pb.StatsReply = pbg.AdminStub(ch).Stats(pb.StatsRequest(), timeout=10)
        return r


def health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(r.status)


def eventually(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``cond()`` holds (polling); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def start_only(address: str, req: pb.IngestRequest) -> None:
    """A stream that sends a CallStart, reads Started and leaves (the reported leak)."""
    s = Stream(address)
    try:
        s.start(req)
    finally:
        s.close()


# -- 1. calls opened but never fed; caps; metadata bounds -----------------------------


def test_callstart_only_streams_expire_and_do_not_block_reindex(server: Proc, feed: Feed) -> None:
    for i in range(4):
        start_only(server.address, feed.start(f"leak{i}"))
    assert stats(server.address).open_calls == 4
    # the cap: a fifth call is refused while four are open, with a clear reason
    code, details = status_of(
        lambda: pbg.IngestStub(grpc.insecure_channel(server.address)).Record(
            iter([feed.start("leak4")]), timeout=30
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_open_calls" in details
    # never fed: expired after call_idle_s, nothing stored, Reindex works again
    eventually(lambda: stats(server.address).open_calls == 0)
    s = stats(server.address)
    assert (s.expired_calls, s.calls) == (4, 0)
    with grpc.insecure_channel(server.address) as ch:
        pbg.AdminStub(ch).Reindex(pb.ReindexRequest(), timeout=60)
    # a new CallStart for the same id records the call from scratch
    with grpc.insecure_channel(server.address) as ch:
        replies = list(pbg.IngestStub(ch).Record(feed.requests("leak0"), timeout=120))
    assert replies[-1].WhichOneof("msg") == "sealed"


def test_a_stream_that_stays_but_sends_no_audio_is_ended(server: Proc, feed: Feed) -> None:
    s = Stream(server.address)
    try:
        assert not s.start(feed.start("quiet")).resumed
        with pytest.raises(grpc.RpcError) as e:
            s.next()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no audio within 1 s of its CallStart" in (e.value.details() or "")
    finally:
        s.close()
    assert stats(server.address).open_calls == 0


def test_a_call_with_audio_whose_stream_left_is_sealed_not_dropped(
    server: Proc, feed: Feed
) -> None:
    s = Stream(server.address)
    try:
        s.start(feed.start("gone"))
        ack = s.send_acked(feed.batches[: len(feed.batches) // 2])
    finally:
        s.close()  # the client leaves for good
    assert max(ack.durable_frames) > 50
    eventually(lambda: stats(server.address).resume_sealed_calls == 1)
    with grpc.insecure_channel(server.address) as ch:
        info = pbg.ArchiveStub(ch).GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="gone")))
    assert info.state == "sealed"
    # every acknowledged frame is in the sealed call
    assert info.end_us - info.start_us >= max(ack.durable_frames) * 20_000
    assert stats(server.address).open_calls == 0
    # a reconnect of the same recording after the seal gets Sealed, not an error
    s = Stream(server.address)
    try:
        started = s.start(feed.start("gone"))
        assert started.sealed_before
        assert s.until("sealed").sealed.frames > 0
    finally:
        s.close()


def test_metadata_is_bounded_before_anything_is_kept(server: Proc, feed: Feed) -> None:
    ch = grpc.insecure_channel(server.address)
    ingest = pbg.IngestStub(ch)

    def start(**meta: object) -> Callable[[], object]:
        req = feed.start("meta")
        req.start.meta.MergeFrom(pb.CallMeta(**meta))  # type: ignore[arg-type]
        return lambda: ingest.Record(iter([req]), timeout=30)

    cases: list[tuple[Callable[[], object], str]] = [
        (start(agent="a" * (7 << 20)), f"agent is {7 << 20} bytes: at most"),
        (start(tags=[f"t{i}" for i in range(100_000)]), "100000 tags: at most"),
        (start(tags=["x" * 65]), "tag 1 is 65 bytes"),
        (start(extra={f"k{i}": "v" for i in range(65)}), "65 extra keys"),
        (start(extra={"note": "n" * 2000}), "extra['note'] is 2000 bytes"),
        (
            start(extra={f"k{i}": "v" * 1000 for i in range(20)}),
            "metadata is 20",
        ),
        (start(customer_number="12\x0034"), "customer_number holds a NUL"),
    ]
    for fn, text in cases:
        code, details = status_of(fn)
        assert (code, text in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), (
            text,
            code,
            details[:200],
        )
    s = stats(server.address)
    assert (s.open_calls, s.calls) == (0, 0)
    ch.close()


# -- 2. ids; unexpected errors --------------------------------------------------------


def test_ids_refuse_nul_and_dot_names(server: Proc, feed: Feed) -> None:
    ch = grpc.insecure_channel(server.address)
    ingest = pbg.IngestStub(ch)

    def start(call_id: str = "ok", tenant: str = "", leg: str = "a") -> Callable[[], object]:
        req = pb.CallStart(call_id=call_id, tenant=tenant, legs=[pb.LegSpec(name=leg)])
        return lambda: ingest.Record(iter([pb.IngestRequest(start=req)]), timeout=30)

    archive = pbg.ArchiveStub(ch)
    cases: list[tuple[Callable[[], object], str]] = [
        (start(call_id="a\x00b"), "call_id 'a\\x00b': use 1 to 128"),
        (start(tenant="t\x00"), "tenant 't\\x00': use"),
        (start(call_id="."), "call_id '.': use"),
        (start(call_id=".."), "not . or .."),
        (start(tenant=".."), "tenant '..'"),
        (start(leg=".."), "leg name '..'"),
        (start(leg="a\x00"), "leg name 'a\\x00'"),
        (start(call_id="x" * 5000), "(cut; 5000 characters)"),
        (
            lambda: archive.GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="a\x00b"))),
            "call.call_id 'a\\x00b'",
        ),
        (
            lambda: archive.GetCall(
                pb.GetCallRequest(call=pb.CallRef(call_id="ok", tenant="\x00"))
            ),
            "call.tenant '\\x00'",
        ),
        (lambda: list(archive.Search(pb.SearchRequest(tenant="t\x00"))), "tenant 't\\x00'"),
        (lambda: list(archive.Search(pb.SearchRequest(agent="a\x00"))), "agent holds a NUL"),
        (
            lambda: list(
                pbg.IntegrityStub(ch).Verify(pb.VerifyRequest(call_ids=["a\x00b"], tenant="x"))
            ),
            "call_ids item 'a\\x00b'",
        ),
        (
            lambda: pbg.ArchiveStub(ch).Play(pb.PlayRequest(call=pb.CallRef(call_id=".."))),
            "call.call_id '..'",
        ),
        (
            lambda: pbg.AdminStub(ch).Erase(
                pb.EraseRequest(call=pb.CallRef(call_id="ok"), reason="r" * (2 << 20))
            ),
            "reason is",
        ),
    ]
    for fn, text in cases:
        code, details = status_of(fn)
        assert (code, text in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), (
            text,
            code,
            details[:200],
        )
    assert ids.is_call_id("a.b") and not ids.is_call_id("..")
    ch.close()


def test_an_unexpected_error_is_internal_with_a_sentence(tmp_path: Path) -> None:
    """A servicer that raises something no status was chosen for: INTERNAL and a
    sentence of ours, never grpcio's UNKNOWN with the exception's text (the real
    interceptor chain on a real gRPC server, with one handler that fails)."""
    from concurrent.futures import ThreadPoolExecutor

    from callvault.access.identity import OpenAuthenticator
    from callvault.server.interceptors import IdentityInterceptor, MethodLog

    def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise KeyError("secret-internal-detail")

    handler = grpc.method_handlers_generic_handler(
        "callvault.v1.Admin", {"Stats": grpc.unary_unary_rpc_method_handler(broken)}
    )
    methods = MethodLog()
    srv = grpc.server(
        ThreadPoolExecutor(2), interceptors=[IdentityInterceptor(OpenAuthenticator(), methods)]
    )
    srv.add_generic_rpc_handlers([handler])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stats_rpc: Any = ch.unary_unary("/callvault.v1.Admin/Stats")
            code, details = status_of(lambda: stats_rpc(b""))
    finally:
        srv.stop(None)
    assert code == grpc.StatusCode.INTERNAL
    assert details.startswith("the server failed to handle Stats: an internal error")
    assert "secret-internal-detail" not in details and "KeyError" not in details
    assert methods.counts() == {"/callvault.v1.Admin/Stats INTERNAL": 1}


# -- 3. health follows the segment writer ---------------------------------------------


def test_health_is_not_serving_while_the_segment_writer_failed(tmp_path: Path, feed: Feed) -> None:
    # small segments: recording a call creates new segment files
    srv = serve(tmp_path, segment_bytes=4096)
    seg = tmp_path / "data" / "segments"
    away = tmp_path / "data" / "segments.away"
    try:
        assert health(srv.address) == health_pb2.HealthCheckResponse.SERVING
        assert stats(srv.address).writer_error == ""
        with grpc.insecure_channel(srv.address) as ch:
            list(pbg.IngestStub(ch).Record(feed.requests("w0"), timeout=120))
        seg.rename(away)  # the directory is gone: creating the next segment fails
        with grpc.insecure_channel(srv.address) as ch:
            code, details = status_of(
                lambda: pbg.IngestStub(ch).Record(feed.requests("w1"), timeout=120)
            )
        assert code != grpc.StatusCode.OK and "segment writer failed for good" in details
        eventually(lambda: health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING)
        why = stats(srv.address).writer_error
        assert "segment writer failed for good" in why and "create segment" in why
        assert "NOT_SERVING" in srv.output()
        # writes are refused up front (never reported failed after being applied)
        with grpc.insecure_channel(srv.address) as ch:
            code, details = status_of(
                lambda: pbg.IngestStub(ch).Record(feed.requests("w2"), timeout=30)
            )
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "the vault cannot store anything now" in details
            code, details = status_of(
                lambda: pbg.AdminStub(ch).Erase(
                    pb.EraseRequest(call=pb.CallRef(call_id="w0"), reason="retention")
                )
            )
            assert code == grpc.StatusCode.UNAVAILABLE
            info = pbg.ArchiveStub(ch).GetCall(pb.GetCallRequest(call=pb.CallRef(call_id="w0")))
            assert info.state == "sealed"
    finally:
        if away.exists():
            away.rename(seg)
        srv.stop()


def test_health_is_serving_again_once_the_writer_reopens(tmp_path: Path, feed: Feed) -> None:
    srv = serve(tmp_path, segment_bytes=4096)
    seg = tmp_path / "data" / "segments"
    away = tmp_path / "data" / "segments.away"
    try:
        seg.rename(away)
        with grpc.insecure_channel(srv.address) as ch:
            status_of(lambda: pbg.IngestStub(ch).Record(feed.requests("w1"), timeout=120))
        eventually(lambda: health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING)
        away.rename(seg)  # the cause is gone
        eventually(lambda: health(srv.address) == health_pb2.HealthCheckResponse.SERVING, 20)
        assert stats(srv.address).writer_error == ""
        with grpc.insecure_channel(srv.address) as ch:
            replies = list(pbg.IngestStub(ch).Record(feed.requests("w2"), timeout=120))
        assert replies[-1].WhichOneof("msg") == "sealed"
    finally:
        if away.exists():
            away.rename(seg)
        srv.stop()


# -- 4. a reused call id ----------------------------------------------------------------


def test_a_reused_call_id_is_refused_and_a_reconnect_resumes(server: Proc, feed: Feed) -> None:
    def start(rid: str) -> pb.IngestRequest:
        req = feed.start("RI1")
        req.start.recording_id = rid
        return req

    # while the call is live: the same recording takes over, another one is refused
    s = Stream(server.address)
    s.start(start("rec-A"))
    s.send_acked(feed.batches[:3])
    with grpc.insecure_channel(server.address) as ch:
        code, details = status_of(
            lambda: pbg.IngestStub(ch).Record(iter([start("rec-B")]), timeout=30)
        )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "call RI1 already exists (being recorded)" in details
    s.close()
    with grpc.insecure_channel(server.address) as ch:
        reqs = [start("rec-A"), *list(feed.requests("RI1", first=3))[1:]]
        replies = list(pbg.IngestStub(ch).Record(iter(reqs), timeout=120))
        assert replies[0].started.resumed and replies[0].started.resume_from_seq == 3
        assert replies[-1].WhichOneof("msg") == "sealed"
        # sealed: another recording under the id is refused, never half-recorded
        code, details = status_of(
            lambda: pbg.IngestStub(ch).Record(iter([start("rec-B"), *reqs[1:]]), timeout=30)
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert "call RI1 already exists (sealed)" in details
        info = pbg.ArchiveStub(ch).GetCall(
            pb.GetCallRequest(call=pb.CallRef(call_id="RI1"), include_summary=True)
        )
    assert json.loads(info.summary_json)["recording_id"] == "rec-A"


@pytest.mark.parametrize("where", ["server", "local"])
def test_import_of_an_existing_call_id_compares_content(
    where: str, tmp_path: Path, capture: Path
) -> None:
    other = tmp_path / "other.pcap"
    sample.demo_capture(other, seconds=4.0)
    srv = start_server(tmp_path / "data") if where == "server" else None
    target = ["--server", srv.address] if srv else ["--data", str(tmp_path / "data")]
    try:
        first = run_cli(*target, "import", "--call-id", "RI1", str(capture))
        again = run_cli(*target, "import", "--call-id", "RI1", str(capture))
        assert again.stdout == first.stdout  # the same seal
        assert "already stored, identical" in again.stderr
        p = run_cli(*target, "import", "--call-id", "RI1", str(other), ok=False)
        assert p.returncode != 0 and p.stdout == ""
        assert "call RI1 already exists" in p.stderr and "Traceback" not in p.stderr
    finally:
        if srv is not None:
            srv.stop()


def test_after_a_restart_only_the_same_recording_resumes_an_open_call(
    tmp_path: Path, feed: Feed
) -> None:
    """The recording_id is kept with the open call in the vault (OPEN record, call
    entry): after a SIGKILL another recording under the call id is refused, the
    recording that opened it resumes and seals."""

    def start(rid: str) -> pb.IngestRequest:
        req = feed.start("RR1")
        req.start.recording_id = rid
        return req

    srv = serve(tmp_path)
    s = Stream(srv.address)
    s.start(start("rec-A"))
    ack = s.send_acked(feed.batches[: len(feed.batches) // 2])
    assert min(ack.durable_frames) >= 50  # the call is open in the vault with audio
    srv.kill()
    s.close()
    srv = serve(tmp_path)
    try:
        with grpc.insecure_channel(srv.address) as ch:
            stub = pbg.IngestStub(ch)
            code, details = status_of(lambda: stub.Record(iter([start("rec-B")]), timeout=30))
            assert code == grpc.StatusCode.ALREADY_EXISTS, details
            assert "call RR1 already exists (open)" in details
            code, _ = status_of(lambda: stub.Record(iter([start("")]), timeout=30))
            assert code == grpc.StatusCode.ALREADY_EXISTS
            reqs = [start("rec-A"), *list(feed.requests("RR1"))[1:]]
            replies = list(stub.Record(iter(reqs), timeout=120))
            assert replies[0].started.resumed and replies[0].started.resume_from_seq == 0
            assert replies[-1].WhichOneof("msg") == "sealed"
            info = pbg.ArchiveStub(ch).GetCall(
                pb.GetCallRequest(call=pb.CallRef(call_id="RR1"), include_summary=True)
            )
        assert json.loads(info.summary_json)["recording_id"] == "rec-A"
    finally:
        srv.stop()


# -- the call start against forged timestamps (issue 9 re-test) ----------------------------


def _forged_stream(
    call_id: str, forged: list[int], start_us: int = 0
) -> Iterator[pb.IngestRequest]:
    """2 s of one PCMU leg, 100 batches of one 20 ms packet; the first batches also carry
    a packet of the same SSRC whose timestamp runs ``forged[i]`` samples ahead."""
    from callvault.media.rtppack import PT_PCMU, build_packet

    yield pb.IngestRequest(
        start=pb.CallStart(call_id=call_id, legs=[pb.LegSpec(name="a")], start_us=start_us)
    )
    t0 = 1_700_000_000_000_000
    audio = bytes(range(256))[:160]
    for i in range(100):
        pkts = [build_packet(PT_PCMU, 100 + i, 1000 + 160 * i, 0x77, audio)]
        if i < len(forged):
            ts = (1000 + 160 * i + forged[i]) % 2**32
            pkts.append(build_packet(PT_PCMU, 100 + i, ts, 0x77, audio))
        yield pb.IngestRequest(
            batch=pb.RtpBatch(
                seq=i,
                leg=0,
                packets=b"".join(pkts),
                lengths=[len(p) for p in pkts],
                arrival_us=[t0 + 20_000 * (i + 1)] * len(pkts),
            )
        )
    yield pb.IngestRequest(end=pb.CallEnd(batches=100))


@pytest.mark.parametrize(
    "forged",
    [[8_000_000], [480_000], [0x9E3779B9 * (i + 1) % 2**32 for i in range(150)]],
    ids=["1000s-ahead", "60s-ahead", "random-32bit"],
)
def test_forged_timestamps_in_the_first_batch_never_stretch_the_call(
    server: Proc, forged: list[int]
) -> None:
    """One packet 8,000,000 samples ahead in the first batch made a 2 s call 1,002 s
    long; random 32-bit timestamps made the server grow to 5.9 GB and never seal."""
    with grpc.insecure_channel(server.address) as ch:
        replies = list(pbg.IngestStub(ch).Record(_forged_stream("forged", forged), timeout=60))
    sealed = replies[-1]
    assert sealed.WhichOneof("msg") == "sealed", replies
    assert abs(sealed.sealed.frames - 100) <= 16, sealed  # 2 s, plus at most the window


def test_a_start_hours_before_the_first_audio_is_refused(server: Proc) -> None:
    t0 = 1_700_000_000_000_000
    early = t0 - 5 * 3_600_000_000
    with grpc.insecure_channel(server.address) as ch:
        code, details = status_of(
            lambda: pbg.IngestStub(ch).Record(_forged_stream("early", [], early), timeout=60)
        )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "before the call's first audio sample: at most 3600 s" in details
