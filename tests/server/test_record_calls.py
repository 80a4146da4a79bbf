"""Ingest.RecordCalls over gRPC against a real `callvault serve` on loopback: several
calls on one stream store exactly what a local import of the same capture stores;
a call's error comes as an IngestMuxError with Record's status code on its slot
only; Admin.Stats counts the stream and its calls; an undecodable message ends the
stream (INVALID_ARGUMENT) and its calls resume on a new stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from callvault_client import Client
from callvault_client._pb import callvault_pb2 as pb

from callvault.media import sample
from callvault.vault import Vault
from tests.rtpfeed import Feed, Packets, capture_feed, imported_packets
from tests.servers import Proc, start_server

pytestmark = pytest.mark.timeout(300)

METHOD = "/callvault.v1.Ingest/RecordCalls"


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(path, seconds=6.0)
    return path


@pytest.fixture(scope="module")
def feed(capture: Path) -> Feed:
    return capture_feed(capture)


@pytest.fixture(scope="module")
def reference(capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Packets:
    """What a local import of the capture stores: per leg, its Opus packets."""
    return imported_packets(capture, tmp_path_factory.mktemp("ref") / "vault")


def stored(data: Path, call_id: str) -> Packets:
    with Vault.open(data, read_only=True) as v:
        assert v.verify_call(call_id) == []
        return [(d, ln.tolist()) for d, ln in v.read_packets(call_id)]


class Mux:
    """A raw RecordCalls stream: ``send`` messages (IngestMux or raw bytes), ``events``
    the replies' events."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.q: queue.Queue[bytes | None] = queue.Queue()
        call = self.channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=pb.IngestMuxReply.FromString,
        )
        self.replies = call(self._requests())
        self.got: queue.Queue[pb.IngestMuxReply | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[bytes]:
        while (m := self.q.get()) is not None:
            yield m

    def _read(self) -> None:
        try:
            for r in self.replies:
                self.got.put(r)
            self.got.put(None)
        except grpc.RpcError as e:
            self.got.put(e)

    def send(self, msg: pb.IngestMux | bytes) -> None:
        self.q.put(msg if isinstance(msg, bytes) else msg.SerializeToString())

    def until(self, done: object) -> list[pb.IngestMuxEvent]:
        """Events until ``done(events so far)`` holds."""
        out: list[pb.IngestMuxEvent] = []
        while not done(out):  # type: ignore[operator]
            r = self.got.get(timeout=60)
            assert isinstance(r, pb.IngestMuxReply), r
            out.extend(r.events)
        return out

    def close(self) -> None:
        self.q.put(None)
        self.channel.close()


def start(feed: Feed, slot: int, call_id: str, **kw: str) -> pb.IngestMuxItem:
    s = feed.start(call_id).start
    for k, v in kw.items():
        setattr(s, k, v)
    return pb.IngestMuxItem(slot=slot, start=s)


def batches(feed: Feed, slot: int, lo: int = 0, hi: int | None = None) -> list[pb.IngestMuxItem]:
    return [pb.IngestMuxItem(slot=slot, batch=b) for b in feed.batches[lo:hi]]


def sealed(slot: int) -> object:
    return lambda evs: any(e.slot == slot and e.WhichOneof("msg") == "sealed" for e in evs)


def test_calls_on_one_stream_store_what_an_import_stores(
    tmp_path: Path, feed: Feed, reference: Packets
) -> None:
    server: Proc = start_server(tmp_path / "data")
    try:
        mux = Mux(server.address)
        mux.send(
            pb.IngestMux(
                items=[
                    start(feed, 1, "r1"),
                    start(feed, 2, "r2"),
                    start(feed, 3, "r3", tenant="bad tenant"),
                ]
            )
        )
        evs = mux.until(lambda e: len(e) >= 3)
        kinds = {e.slot: e.WhichOneof("msg") for e in evs}
        assert kinds == {1: "started", 2: "started", 3: "error"}
        [err] = [e.error for e in evs if e.slot == 3]
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "tenant" in err.message
        with Client(server.address) as c:
            s = c.stats()
            assert (s.mux_streams, s.mux_calls) == (1, 2)
        # both calls' batches interleaved, a gap on r2 half way (FAILED_PRECONDITION)
        half = len(feed.batches) // 8 * 4  # a multiple of 4: where a message starts
        for i in range(0, len(feed.batches), 4):
            items = batches(feed, 1, i, i + 4)
            if i < half:
                items += batches(feed, 2, i, i + 4)
            elif i == half:
                items += batches(feed, 2, i + 1, i + 4)
            mux.send(pb.IngestMux(items=items))
        mux.send(
            pb.IngestMux(
                items=[pb.IngestMuxItem(slot=1, end=pb.CallEnd(batches=len(feed.batches)))]
            )
        )
        evs = mux.until(sealed(1))
        [err] = [e.error for e in evs if e.slot == 2 and e.WhichOneof("msg") == "error"]
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert f"batch {half + 1} arrived but batch {half} is next" in err.message
        acks = [e.ack.seq for e in evs if e.slot == 1 and e.WhichOneof("msg") == "ack"]
        assert acks == sorted(acks) and acks[-1] == len(feed.batches) - 1
        # an undecodable message ends the stream; r2 resumes on a new one
        mux.send(b"\xff\xff\xff")
        end = mux.got.get(timeout=60)
        while isinstance(end, pb.IngestMuxReply):
            end = mux.got.get(timeout=60)
        assert isinstance(end, grpc.RpcError) and end.code() == grpc.StatusCode.INVALID_ARGUMENT
        mux.close()
        again = Mux(server.address)
        again.send(pb.IngestMux(items=[start(feed, 5, "r2")]))
        [ev] = again.until(lambda e: len(e) >= 1)
        assert ev.started.resume_from_seq == half and ev.started.resumed
        again.send(
            pb.IngestMux(
                items=batches(feed, 5, half)
                + [pb.IngestMuxItem(slot=5, end=pb.CallEnd(batches=len(feed.batches)))]
            )
        )
        again.until(sealed(5))
        again.close()
    finally:
        server.stop()
    assert stored(tmp_path / "data", "r1") == reference
    assert stored(tmp_path / "data", "r2") == reference
