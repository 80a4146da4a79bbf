"""callvault.sidecar.forwarder and the Sidecar's recovery, in process, against a real
`callvault serve` on loopback: the spool is read as the uplink's batches, a spool
left by an earlier sidecar is forwarded once the server is up, and deleted only
after Sealed."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from callvault_client import Client, errors
from callvault_client._pb import callvault_pb2 as pb

from callvault.media import sample
from callvault.sidecar import Sidecar, SidecarError
from callvault.sidecar.forwarder import SpoolSource, retryable
from callvault.sidecar.spool import Spool, spool_name
from tests.e2e.sidecar_procs import send_rtp
from tests.servers import start_server

pytestmark = pytest.mark.timeout(300)

T0_US = 1_790_000_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spooled_call(root: Path, call_id: str, seconds: float = 2.0) -> Spool:
    """A stopped call's spool as a sidecar leaves it: two legs of G.711, one batch per
    leg per 5 packets, ended."""
    start = pb.CallStart(call_id=call_id, legs=[pb.LegSpec(name="agent"), pb.LegSpec(name="b")])
    spool = Spool.create(root, spool_name("", call_id), start.SerializeToString(), [0, 0], T0_US)
    spool.set_start_us(T0_US)
    legs = [
        sample.rtp_packets(
            sample.synthetic_speech(seconds, seed=leg),
            sample.LegPlan(ssrc=0x10 + leg, jitter_ms=0),
            t0=T0_US / 1e6,
            seed=leg,
        )
        for leg in (0, 1)
    ]
    for i in range(0, min(len(p) for p in legs), 5):
        for leg, pkts in enumerate(legs):
            chunk = pkts[i : i + 5]
            spool.append(
                leg,
                b"".join(p for _, p in chunk),
                np.array([len(p) for _, p in chunk], np.int32),
                np.array([round(at * 1e6) for at, _ in chunk], np.int64),
            )
    spool.finish()
    return spool


def test_spool_source_reads_the_spool_as_rtp_batches(tmp_path: Path) -> None:
    spool = spooled_call(tmp_path, "c1", seconds=0.5)
    source = SpoolSource(spool)
    assert source.count() == spool.batches > 2
    for seq in (0, spool.batches - 1):
        got, want = source.batch(seq), spool.read(seq)
        assert (got.seq, got.leg, got.packets) == (seq, want.leg, want.packets)
        assert list(got.lengths) == want.lengths.tolist()
        assert list(got.arrival_us) == want.arrival_us.tolist()
    assert source.end() == pb.CallEnd(batches=spool.batches, end_us=0)


def test_recovered_spool_is_forwarded_when_the_server_comes_and_deleted_once_sealed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    batches = spooled_call(root, "rec-1").batches
    port = free_port()
    sidecar = Sidecar(f"127.0.0.1:{port}", "127.0.0.1", 40000, 40009, root)
    sidecar.start()
    server = None
    try:
        time.sleep(1.0)  # no server: the call waits, spooled
        (call,) = sidecar.list_calls()
        assert call.state == "forwarding" and not call.connected and call.batches == batches
        assert (root / spool_name("", "rec-1")).exists()
        server = start_server(tmp_path / "data", port=port)
        deadline = time.monotonic() + 60
        while sidecar.list_calls()[0].state != "sealed" and time.monotonic() < deadline:
            time.sleep(0.05)
        (call,) = sidecar.list_calls()
        assert call.state == "sealed" and not (root / spool_name("", "rec-1")).exists()
        assert call.acked_seq == batches
        with Client(server.address) as c:
            info = c.get_call("rec-1")
            assert info.state == "sealed" and [r.ok for r in c.verify(["rec-1"])] == [True]
    finally:
        sidecar.shutdown()
        if server is not None:
            server.stop()


def _wait_state(
    sidecar: Sidecar, call_id: str, state: str, timeout: float = 60.0
) -> pb.SidecarCall:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in sidecar.list_calls():
            if c.call_id == call_id and c.state == state:
                return c
        time.sleep(0.05)
    raise AssertionError(f"{call_id} not {state}: {sidecar.list_calls()}")


@pytest.mark.parametrize(
    ("code", "retried"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.ABORTED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
        (grpc.StatusCode.ALREADY_EXISTS, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.OUT_OF_RANGE, False),
    ],
)
def test_only_transient_statuses_are_retried(code: grpc.StatusCode, retried: bool) -> None:
    cls = next(c for c in vars(errors).values() if getattr(c, "code", None) == code)
    assert retryable(cls("x")) is retried
    assert retryable(errors.ProtocolError("the server ended the stream without Sealed"))


def test_a_call_the_server_refuses_for_good_ends_alone_and_frees_its_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's empty datagram (the server refuses the batch: INVALID_ARGUMENT) and a
    tenant the server refuses, in spools an older sidecar left: each call ends with the
    server's reason after one stream, its spool deleted; the good call beside them seals."""
    root = tmp_path / "spool"
    root.mkdir()
    server = start_server(tmp_path / "data")
    empty = spooled_call(root, "empty-1", seconds=0.5)
    spooled_call(root, "good-1", seconds=0.5)
    bad_tenant = pb.CallStart(call_id="t-1", tenant="bad tenant", legs=[pb.LegSpec(name="a")])
    spool = Spool.create(
        root, spool_name("bad tenant", "t-1"), bad_tenant.SerializeToString(), [0], T0_US
    )
    spool.set_start_us(T0_US)
    spool.finish()
    # One empty packet inside a batch that is otherwise fine: rewrite empty-1 with it.
    batches = [empty.read(seq) for seq in range(empty.batches)]
    empty.delete()
    start = pb.CallStart(call_id="empty-1", legs=[pb.LegSpec(name="agent"), pb.LegSpec(name="b")])
    empty = Spool.create(root, spool_name("", "empty-1"), start.SerializeToString(), [0, 0], T0_US)
    empty.set_start_us(T0_US)
    for i, b in enumerate(batches):
        lengths, arrival = b.lengths, b.arrival_us
        if i == 3:
            lengths = np.append(lengths, 0).astype(np.int32)
            arrival = np.append(arrival, arrival[-1]).astype(np.int64)
        empty.append(b.leg, b.packets, lengths, arrival)
    empty.finish()
    empty.close()
    sidecar = Sidecar(server.address, "127.0.0.1", 40010, 40019, root)
    caplog.set_level(logging.INFO, logger="callvault.sidecar")
    sidecar.start()
    try:
        failed = _wait_state(sidecar, "empty-1", "failed")
        assert failed.reason.startswith("the server refused the call: INVALID_ARGUMENT: "), failed
        assert "packet" in failed.reason
        t1 = _wait_state(sidecar, "t-1", "failed")
        assert "INVALID_ARGUMENT" in t1.reason and "tenant" in t1.reason, t1
        _wait_state(sidecar, "good-1", "sealed")
        time.sleep(1.0)  # a retry loop would show here: 0.1 s backoff
        for call_id in ("empty-1", "t-1"):
            call = sidecar.sealed_keys[("bad tenant" if call_id == "t-1" else "default", call_id)]
            assert call.forwarder is not None
            assert call.forwarder.starts == 1  # started once: never retried
            assert not call.spool.directory.exists()
        errors_logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors_logged) == 2, errors_logged
        assert sorted(m.split(":")[0] for m in errors_logged) == [
            "call empty-1 failed",
            "call t-1 failed",
        ]
        stop = sidecar.stop_call(pb.StopCallRequest(call_id="empty-1"))
        assert (stop.state, stop.reason) == ("failed", failed.reason)
    finally:
        sidecar.shutdown()
        server.stop()


def test_a_spool_that_cannot_be_written_fails_its_call_alone(tmp_path: Path) -> None:
    """The issue's EBADF: a call's spool closed while its RTP still arrives. The call fails
    with the reason, the receive thread goes on and the next call is recorded."""
    root = tmp_path / "spool"
    server = start_server(tmp_path / "data")
    sidecar = Sidecar(server.address, "127.0.0.1", 40020, 40039, root)
    sidecar.start()
    try:
        ports = sidecar.start_call(pb.StartCallRequest(call_id="e1"))
        send_rtp(ports, 0.3, seed=1)
        call = sidecar.calls[("default", "e1")]
        call.spool.close()
        send_rtp(ports, 0.3, seed=2)
        failed = _wait_state(sidecar, "e1", "failed")
        assert "receiving failed (OSError: Bad file descriptor)" in failed.reason, failed
        assert sidecar.receiver.is_alive() and sidecar.check_health() is None
        stop = sidecar.stop_call(pb.StopCallRequest(call_id="e1"))
        assert stop.state == "failed" and stop.reason == failed.reason
        ports = sidecar.start_call(pb.StartCallRequest(call_id="e2"))
        send_rtp(ports, 0.5, seed=3)
        sidecar.stop_call(pb.StopCallRequest(call_id="e2"))
        assert _wait_state(sidecar, "e2", "sealed").packets > 0
        # What e1 spooled before the failure is kept for the next start.
        assert (root / spool_name("", "e1")).is_dir()
    finally:
        sidecar.shutdown()
        server.stop()


def test_health_says_why_when_the_receive_thread_is_gone(tmp_path: Path) -> None:
    sidecar = Sidecar(f"127.0.0.1:{free_port()}", "127.0.0.1", 40040, 40049, tmp_path / "spool")
    states: list[bool] = []
    sidecar.on_health = states.append
    sidecar.start()
    try:
        sidecar.update_health()
        assert sidecar.check_health() is None and states[-1] is True
        sidecar.receiver.shutdown()  # the thread ends (as if it had died)
        sidecar.update_health()
        assert sidecar.unhealthy == "the receive thread has stopped" and states[-1] is False
        with pytest.raises(SidecarError) as e:
            sidecar.start_call(pb.StartCallRequest(call_id="h1"))
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        sidecar.shutdown()


def test_the_uplink_closes_when_idle_and_reopens_for_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stream carries the calls; with none left for IDLE_CLOSE_S the uplink
    half-closes it (the server counts no RecordCalls stream), and the next call opens
    a new one."""
    from callvault.sidecar import forwarder

    monkeypatch.setattr(forwarder, "IDLE_CLOSE_S", 0.5)
    server = start_server(tmp_path / "data")
    sidecar = Sidecar(server.address, "127.0.0.1", 40050, 40069, tmp_path / "spool")
    sidecar.start()
    try:
        with Client(server.address) as client:
            for n, call_id in enumerate(("i1", "i2"), start=1):
                ports = sidecar.start_call(pb.StartCallRequest(call_id=call_id))
                send_rtp(ports, 0.5, seed=n)
                assert client.stats().mux_streams == 1
                sidecar.stop_call(pb.StopCallRequest(call_id=call_id))
                _wait_state(sidecar, call_id, "sealed")
                deadline = time.monotonic() + 30
                while client.stats().mux_streams:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                assert sidecar.uplink.streams == n
                assert client.get_call(call_id).state == "sealed"
    finally:
        sidecar.shutdown()
        server.stop()


def test_a_server_without_record_calls_is_named_and_the_call_stays_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server older than the sidecar (a real gRPC server that serves no Ingest):
    the uplink says so at ERROR, once, and keeps the call spooled, never failed."""
    from concurrent import futures

    root = tmp_path / "spool"
    root.mkdir()
    batches = spooled_call(root, "old-1").batches
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    caplog.set_level(logging.INFO, logger="callvault.sidecar")
    sidecar = Sidecar(f"127.0.0.1:{port}", "127.0.0.1", 40010, 40019, root)
    sidecar.start()
    try:
        deadline = time.monotonic() + 30
        said: list[str] = []
        while not said and time.monotonic() < deadline:
            said = [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.ERROR and "Ingest.RecordCalls" in r.getMessage()
            ]
            time.sleep(0.05)
        assert said and "older than this sidecar" in said[0]
        time.sleep(2.5)  # more attempts: still the one ERROR, the call kept
        assert len([r for r in caplog.records if "Ingest.RecordCalls" in r.getMessage()]) == 1
        (call,) = sidecar.list_calls()
        assert call.state == "forwarding" and call.batches == batches
        assert (root / spool_name("", "old-1")).exists()
    finally:
        sidecar.shutdown()
        server.stop(None)
