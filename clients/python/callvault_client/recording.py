"""`Recording`: one call's Ingest stream, with acknowledgements and reconnection.

The proto's contract (Ingest.Record) and how this class keeps it:

* Batches are numbered 0, 1, 2, ... across legs as :meth:`Recording.send`
  is called, and every batch is kept until the server says Sealed: after a
  server restart Started.resume_from_seq is 0 and the whole call is replayed.
* A background thread owns the stream and reads the replies. When the stream
  breaks with UNAVAILABLE (server gone, restarting, shutting down), it opens a
  new stream with the same CallStart, waits for Started and resends from
  ``resume_from_seq`` (the server skips what it has: resending is idempotent),
  pausing with exponential backoff between attempts, until
  ``reconnect_timeout`` seconds pass without a Started. Other failures
  (INVALID_ARGUMENT, ALREADY_EXISTS, ABORTED: another stream took the call)
  end the recording; the next :meth:`send` or :meth:`end` raises them.
* :meth:`end` sends CallEnd (after every batch) and waits for Sealed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from callvault_client import errors
from callvault_client._channel import Rpc
from callvault_client._pb import callvault_pb2 as pb

_RECORD = "/callvault.v1.Ingest/Record"
# How often a waiting request generator rechecks that its stream is still current.
_POLL_S = 0.5


@dataclass(frozen=True)
class AckEvent:
    """One batch's acknowledgement: when it was handed to send() and when the
    first Ack covering it arrived (``time.monotonic()`` seconds)."""

    seq: int
    sent: float
    acked: float

    @property
    def latency(self) -> float:
        return self.acked - self.sent


class AckView:
    """What the server has acknowledged of a recording so far (thread-safe reads)."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.latest: pb.Ack | None = None  # the last Ack received
        self.seq = -1  # every batch with seq <= this is processed and durable (-1: none)

    @property
    def durable_frames(self) -> list[int]:
        """Per leg: frames [0, n) are durable."""
        return list(self.latest.durable_frames) if self.latest is not None else []

    def wait(self, seq: int, timeout: float | None = None) -> bool:
        """Block until batch ``seq`` is acknowledged; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.seq >= seq, timeout)


class Recording:
    """A call being recorded (see the module docstring). Create with ``Client.record``.

    ``send`` may be called from any thread; ``end`` seals. As a context manager
    it ends the call on a normal exit and cancels the stream on an exception."""

    def __init__(
        self,
        rpc: Rpc,
        start: pb.CallStart,
        *,
        on_ack: Callable[[AckEvent], None] | None = None,
        reconnect_timeout: float | None = 60.0,
    ) -> None:
        self._rpc = rpc
        self._start = start
        self._on_ack = on_ack
        self._reconnect_timeout = reconnect_timeout
        self._cond = threading.Condition()
        self._batches: list[pb.IngestRequest] = []
        self._sent_at: dict[int, float] = {}
        self._epoch = 0  # which stream is current; a request generator of an older one stops
        self._cursor: int | None = None  # next batch to put on the current stream
        self._end: pb.CallEnd | None = None
        self._sealed: pb.Sealed | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._call: grpc.Call | None = None
        self.started: pb.Started | None = None  # the latest Started
        self.reconnects = 0  # streams opened after the first
        self.acks = AckView(self._cond)
        self._thread = threading.Thread(
            target=self._run, name=f"record-{start.call_id}", daemon=True
        )
        self._thread.start()

    @property
    def call_id(self) -> str:
        return self._start.call_id

    @property
    def batches(self) -> int:
        """Batches handed to send() so far."""
        with self._cond:
            return len(self._batches)

    @property
    def sealed(self) -> pb.Sealed | None:
        return self._sealed

    # -- the caller's side --------------------------------------------------------
    def send(
        self, leg: int, packets: bytes, lengths: Sequence[int], arrival_us: Sequence[int]
    ) -> int:
        """Queue one batch of RTP packets of ``leg`` (back to back, with each one's
        byte length and arrival instant); returns its seq. Does not block on the
        network."""
        if len(lengths) != len(arrival_us):
            raise ValueError(f"{len(lengths)} lengths but {len(arrival_us)} arrival times")
        if sum(lengths) != len(packets):
            raise ValueError(f"lengths add up to {sum(lengths)} bytes, packets has {len(packets)}")
        with self._cond:
            self._raise_if_failed()
            if self._end is not None:
                raise RuntimeError(f"call {self.call_id}: send after end")
            seq = len(self._batches)
            self._batches.append(
                pb.IngestRequest(
                    batch=pb.RtpBatch(
                        seq=seq, leg=leg, packets=packets, lengths=lengths, arrival_us=arrival_us
                    )
                )
            )
            self._sent_at[seq] = time.monotonic()
            self._cond.notify_all()
        return seq

    def end(self, end_us: int = 0, timeout: float | None = None) -> pb.Sealed:
        """Send CallEnd after every batch and wait for Sealed (``DeadlineExceeded``
        after ``timeout`` seconds; the recording goes on and end may be called again)."""
        with self._cond:
            if self._end is None:
                self._end = pb.CallEnd(batches=len(self._batches), end_us=end_us)
                self._cond.notify_all()
            done = self._cond.wait_for(
                lambda: self._sealed is not None or self._error is not None, timeout
            )
            if self._sealed is not None:
                return self._sealed
            self._raise_if_failed()
            assert not done
        raise errors.DeadlineExceeded(
            f"call {self.call_id}: not sealed within {timeout} s", method=_RECORD
        )

    def cancel(self) -> None:
        """Abandon the recording: the stream is cancelled, nothing more is sent."""
        with self._cond:
            self._cancelled = True
            if self._error is None and self._sealed is None:
                self._error = errors.Cancelled(
                    f"call {self.call_id}: recording cancelled", method=_RECORD
                )
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self._end is None and self._error is None:
            self.end()
        elif self._sealed is None:
            self.cancel()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the stream's side --------------------------------------------------------
    def _requests(self, epoch: int) -> Iterator[pb.IngestRequest]:
        """The requests of one stream: CallStart, then batches from resume_from_seq
        as they come, then CallEnd once end() was called."""
        yield pb.IngestRequest(start=self._start)
        end_sent = False
        while True:
            with self._cond:
                req: pb.IngestRequest | None = None
                while req is None:
                    if (
                        self._epoch != epoch
                        or self._cancelled
                        or self._error is not None
                        or self._sealed is not None
                        or end_sent
                    ):
                        return
                    if self._cursor is not None and self._cursor < len(self._batches):
                        req = self._batches[self._cursor]
                        self._cursor += 1
                    elif (
                        self._cursor is not None
                        and self._end is not None
                        and self._cursor >= self._end.batches
                    ):
                        req = pb.IngestRequest(end=self._end)
                        end_sent = True
                    else:
                        self._cond.wait(_POLL_S)
            yield req

    def _run(self) -> None:
        failing_since: float | None = None
        attempt = 0
        while True:
            with self._cond:
                if self._cancelled:
                    return
                epoch = self._epoch
                self._cursor = None
                call = self._rpc.bidi(_RECORD, self._requests(epoch), pb.IngestReply)
                self._call = call
            try:
                for reply in call:
                    if self._on_reply(reply):
                        failing_since = None
                        attempt = 0
                    if self._sealed is not None:
                        break
                if self._sealed is None and not self._cancelled:
                    self._fail(
                        errors.ProtocolError(
                            f"call {self.call_id}: the server ended the stream without Sealed",
                            method=_RECORD,
                        )
                    )
                    call.cancel()
                return
            except grpc.RpcError as e:
                if self._cancelled or self._sealed is not None:
                    return
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,) or (
                    self._reconnect_timeout is not None
                    and now - failing_since > self._reconnect_timeout
                ):
                    self._fail(errors.from_rpc_error(e, _RECORD))
                    return
            except BaseException as e:  # on_ack raised, or a bug: fail loudly in send/end
                self._fail(e)
                call.cancel()
                return
            with self._cond:
                self._epoch += 1  # the old stream's request generator stops
                self._cond.notify_all()
            time.sleep(self._rpc.backoff.delay(attempt))
            attempt += 1
            self.reconnects += 1

    def _on_reply(self, reply: pb.IngestReply) -> bool:
        """Handle one reply; True if it was Started (the stream is up)."""
        kind = reply.WhichOneof("msg")
        events: list[AckEvent] = []
        with self._cond:
            if kind == "started":
                resume = reply.started.resume_from_seq
                if resume > len(self._batches):
                    raise errors.ProtocolError(
                        f"call {self.call_id}: server resumes from batch {resume} but only "
                        f"{len(self._batches)} were sent",
                        method=_RECORD,
                    )
                self.started = reply.started
                self._cursor = resume
            elif kind == "ack":
                ack = reply.ack
                self.acks.latest = ack
                now = time.monotonic()
                for seq in range(self.acks.seq + 1, ack.seq + 1):
                    sent = self._sent_at.pop(seq, None)
                    if sent is not None:
                        events.append(AckEvent(seq, sent, now))
                self.acks.seq = max(self.acks.seq, ack.seq)
            elif kind == "sealed":
                self._sealed = reply.sealed
            self._cond.notify_all()
        if self._on_ack is not None:
            for ev in events:
                self._on_ack(ev)
        return kind == "started"

    def _fail(self, e: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = e
            self._cond.notify_all()
