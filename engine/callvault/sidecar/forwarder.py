"""The link to the server: one forwarder thread per call, an Ingest.Record stream to
``--server``: CallStart, then on Started every spooled batch from
``resume_from_seq`` on, then live ones; after the stop, CallEnd(batches = total);
on Sealed the spool is deleted. Any stream error (server down, killed
mid-stream) means back off and reconnect, forever, while the receiver keeps
spooling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from callvault_client._pb import callvault_pb2 as pb
from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.sidecar.call import Call

if TYPE_CHECKING:
    from callvault.sidecar.daemon import Sidecar

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 2.0)  # forwarder reconnect backoff: first, largest


class _Attempt:
    """One Ingest.Record stream of a call: its request generator and what came back."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.resume: int | None = None
        self.dead = False

    def requests(self) -> Iterator[pb.IngestRequest]:
        call = self.call
        yield pb.IngestRequest(start=call.call_start())
        with call.cond:
            while self.resume is None and not self.dead:
                call.cond.wait(0.5)
            if self.dead or self.resume is None:
                return
            seq = self.resume
        while True:
            with call.cond:
                while not self.dead and seq >= call.spool.batches and call.spool.end is None:
                    call.cond.wait(0.5)
                if self.dead:
                    return
                end = call.spool.end
            if seq < call.spool.batches:
                b = call.spool.read(seq)
                yield pb.IngestRequest(
                    batch=pb.RtpBatch(
                        seq=b.seq,
                        leg=b.leg,
                        packets=b.packets,
                        lengths=b.lengths.tolist(),
                        arrival_us=b.arrival_us.tolist(),
                    )
                )
                seq += 1
            elif end is not None:
                yield pb.IngestRequest(end=pb.CallEnd(batches=end.batches, end_us=end.end_us))
                return

    def started(self, resume: int) -> None:
        with self.call.cond:
            self.resume = resume
            self.call.cond.notify_all()

    def close(self) -> None:
        with self.call.cond:
            self.dead = True
            self.call.cond.notify_all()


class Forwarder(threading.Thread):
    """Forward one call to the server until it is sealed, reconnecting forever."""

    def __init__(self, sidecar: Sidecar, call: Call) -> None:
        super().__init__(name=f"forward-{call.call_id}", daemon=True)
        self.sidecar = sidecar
        self.call = call

    def run(self) -> None:
        call = self.call
        backoff = BACKOFF_S[0]
        stub = pbg.IngestStub(self.sidecar.channel)
        while not self.sidecar.closing.is_set():
            attempt = _Attempt(call)
            try:
                for reply in stub.Record(attempt.requests()):
                    kind = reply.WhichOneof("msg")
                    if kind == "started":
                        resume = reply.started.resume_from_seq
                        if resume > call.spool.batches:
                            log.error(
                                "%s: server says resume from batch %d, the spool has %d",
                                call.call_id,
                                resume,
                                call.spool.batches,
                            )
                        log.info(
                            "%s: stream up, resume from %d (resumed=%s)",
                            call.call_id,
                            resume,
                            reply.started.resumed,
                        )
                        call.connected = True
                        backoff = BACKOFF_S[0]
                        attempt.started(resume)
                    elif kind == "ack":
                        call.spool.set_acked(reply.ack.seq + 1)
                    elif kind == "sealed":
                        attempt.close()
                        self.sidecar.sealed(call, reply.sealed)
                        return
                log.warning("%s: the server ended the stream without Sealed", call.call_id)
            except grpc.RpcError as e:
                if not self.sidecar.closing.is_set():
                    log.info(
                        "%s: stream lost (%s: %s); retry in %.1f s",
                        call.call_id,
                        e.code().name if e.code() else "?",
                        e.details(),
                        backoff,
                    )
            finally:
                attempt.close()
                call.connected = False
            if self.sidecar.closing.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_S[1])
