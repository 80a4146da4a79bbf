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
  end the recording, unless ``retry`` says otherwise; the next :meth:`send`
  or :meth:`end` raises them. :meth:`cancel` ends a pause at once.
* :meth:`end` sends CallEnd (after every batch) and waits for Sealed.

Two uses beyond the plain one, both keeping that contract:

* A recording can take its batches from a :class:`BatchSource` (a store of the
  caller's that outlives the process, e.g. a spool on disk) instead of
  :meth:`send` keeping them in memory: the stream reads batch ``seq`` from the
  source when it sends it, the source says when the call ended, and the caller
  calls :meth:`Recording.wake` when the source grew. The source holds what is
  already there when the recording starts, so a restarted process resumes its
  call with the same CallStart and the server's ``resume_from_seq``.
* A long-lived forwarder can reconnect after any failure, not only UNAVAILABLE
  (``retry``), and hear about each reply and each lost stream (``on_reply``,
  ``on_lost``) to log them and keep its own books.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


class BatchSource(Protocol):
    """Where a :class:`Recording` created with ``source=`` reads its batches.

    Batches are numbered 0, 1, 2, ... with no gaps; the source only grows, and
    keeps every batch until the recording is sealed (after a server restart the
    whole call is sent again). Called from the recording's stream threads, so
    each method must be safe to call while the caller appends."""

    def count(self) -> int:
        """How many batches there are now (the next seq)."""
        ...

    def batch(self, seq: int) -> pb.RtpBatch:
        """Batch ``seq`` (``0 <= seq < count()``), its ``seq`` field set."""
        ...

    def end(self) -> pb.CallEnd | None:
        """The call's end once no batch will follow (``batches == count()``), else None."""
        ...


class _Broken(Exception):
    """A reply that breaks the contract (carries the ProtocolError to report)."""

    def __init__(self, error: errors.ProtocolError) -> None:
        super().__init__(str(error))
        self.error = error


def _unavailable(e: errors.CallvaultClientError) -> bool:
    return isinstance(e, errors.Unavailable)


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
    it ends the call on a normal exit and cancels the stream on an exception.

    Options (all keyword):

    * ``on_ack(AckEvent)``: once per acknowledged batch handed to :meth:`send`
      (none for a ``source``: see ``on_reply``).
    * ``reconnect_timeout``: after a broken stream, reconnect until this many
      seconds pass without a Started (None: forever).
    * ``source``: a :class:`BatchSource` the batches are read from instead of
      :meth:`send` (which then raises); its ``end()`` is the CallEnd, so
      :meth:`end` only waits for Sealed. Call :meth:`wake` when it grew or
      ended (else the stream notices within half a second). With a source, a
      ``resume_from_seq`` beyond ``count()`` is not an error: the stream waits
      for the source to grow to it (a store that lost its unsynced tail in a
      power cut while the server kept what it had been sent).
    * ``retry(error)``: whether a lost stream is reopened (default: only
      ``errors.Unavailable``). It is given the error the recording would
      otherwise fail with: the gRPC status as an SDK error, or a
      ``ProtocolError`` when the server ended the stream without Sealed or
      resumed beyond what was sent.
    * ``on_reply(IngestReply)``: every reply (Started, Ack, Sealed), after the
      recording took it in; called in the stream thread, so keep it short.
    * ``on_lost(error, delay)``: a stream was lost and a new one opens after
      ``delay`` seconds (called before the pause).

    A callback that raises ends the recording with that exception."""

    def __init__(
        self,
        rpc: Rpc,
        start: pb.CallStart,
        *,
        on_ack: Callable[[AckEvent], None] | None = None,
        reconnect_timeout: float | None = 60.0,
        source: BatchSource | None = None,
        retry: Callable[[errors.CallvaultClientError], bool] | None = None,
        on_reply: Callable[[pb.IngestReply], None] | None = None,
        on_lost: Callable[[errors.CallvaultClientError, float], None] | None = None,
    ) -> None:
        self._rpc = rpc
        self._start = start
        self._on_ack = on_ack
        self._reconnect_timeout = reconnect_timeout
        self._source = source
        self._retry = retry or _unavailable
        self._on_reply_cb = on_reply
        self._on_lost = on_lost
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
        self.connected = False  # a stream is up: Started came and it has not broken since
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
        """Batches handed to send() so far (with a source: the source's count)."""
        with self._cond:
            return self._count()

    @property
    def sealed(self) -> pb.Sealed | None:
        return self._sealed

    @property
    def recorded(self) -> bool:
        """False once the server said its recording policy does not record this call
        (Started.decision): Sealed follows at once, and batches are not stored."""
        s = self.started
        return s is None or not s.HasField("decision") or s.decision.recorded

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
        if self._source is not None:
            raise RuntimeError(f"call {self.call_id}: its batches come from its source")
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

    def pause(self, at_us: int = 0) -> int:
        """PCI pause from ``at_us`` (the clock of the batches' arrival_us; 0 = the
        latest arrival sent): packets arriving from then are discarded by the server and
        the span stored as silence (docs/format.md 1.2). Takes a seq; returns it."""
        return self._control(pause=pb.Pause(at_us=at_us))

    def resume(self, at_us: int = 0) -> int:
        """The end of the pause (``pause``); returns its seq."""
        return self._control(resume=pb.Resume(at_us=at_us))

    def _control(self, **kw: Any) -> int:
        if self._source is not None:
            raise RuntimeError(f"call {self.call_id}: its batches come from its source")
        with self._cond:
            self._raise_if_failed()
            if self._end is not None:
                raise RuntimeError(f"call {self.call_id}: pause or resume after end")
            seq = len(self._batches)
            req = pb.IngestRequest(**kw)
            getattr(req, next(iter(kw))).seq = seq
            self._batches.append(req)
            self._sent_at[seq] = time.monotonic()
            self._cond.notify_all()
        return seq

    def end(self, end_us: int = 0, timeout: float | None = None) -> pb.Sealed:
        """Send CallEnd after every batch and wait for Sealed (``DeadlineExceeded``
        after ``timeout`` seconds; the recording goes on and end may be called again).
        With a source, the CallEnd is the source's (``end_us`` must be 0): this only
        waits."""
        if self._source is not None and end_us:
            raise ValueError(f"call {self.call_id}: the source gives the CallEnd")
        with self._cond:
            if self._end is None and self._source is None:
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

    def wake(self) -> None:
        """The source grew or ended: let the stream send now (thread-safe, cheap)."""
        with self._cond:
            self._cond.notify_all()

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
    def _count(self) -> int:
        return self._source.count() if self._source is not None else len(self._batches)

    def _call_end(self) -> pb.CallEnd | None:
        return self._source.end() if self._source is not None else self._end

    def _request(self, seq: int) -> pb.IngestRequest:
        if self._source is None:
            return self._batches[seq]  # a list only grows: safe without the lock
        return pb.IngestRequest(batch=self._source.batch(seq))

    def _requests(self, epoch: int) -> Iterator[pb.IngestRequest]:
        """The requests of one stream: CallStart, then batches from resume_from_seq
        as they come, then CallEnd once end() was called (or the source ended)."""
        yield pb.IngestRequest(start=self._start)
        end_sent = False
        while True:
            with self._cond:
                req: pb.IngestRequest | None = None
                seq: int | None = None
                while req is None and seq is None:
                    if (
                        self._epoch != epoch
                        or self._cancelled
                        or self._error is not None
                        or self._sealed is not None
                        or end_sent
                    ):
                        return
                    end = self._call_end()
                    if self._cursor is not None and self._cursor < self._count():
                        seq = self._cursor
                        self._cursor += 1
                    elif (
                        self._cursor is not None and end is not None and self._cursor >= end.batches
                    ):
                        req = pb.IngestRequest(end=end)
                        end_sent = True
                    else:
                        self._cond.wait(_POLL_S)
            if req is None:
                assert seq is not None
                req = self._request(seq)  # outside the lock: a source may read a disk
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
            lost: errors.CallvaultClientError
            try:
                for reply in call:
                    if self._on_reply(reply):
                        failing_since = None
                        attempt = 0
                    if self._sealed is not None:
                        break
                if self._sealed is not None or self._cancelled:
                    return
                lost = errors.ProtocolError(
                    f"call {self.call_id}: the server ended the stream without Sealed",
                    method=_RECORD,
                )
                call.cancel()
            except grpc.RpcError as e:
                if self._cancelled or self._sealed is not None:
                    return
                lost = errors.from_rpc_error(e, _RECORD)
            except _Broken as e:
                call.cancel()
                lost = e.error
            except BaseException as e:  # a callback raised, or a bug: fail loudly in send/end
                self._fail(e)
                call.cancel()
                return
            finally:
                self.connected = False
            now = time.monotonic()
            failing_since = failing_since if failing_since is not None else now
            if not self._retry(lost) or (
                self._reconnect_timeout is not None
                and now - failing_since > self._reconnect_timeout
            ):
                self._fail(lost)
                return
            with self._cond:
                self._epoch += 1  # the old stream's request generator stops
                self._cond.notify_all()
            delay = self._rpc.backoff.delay(attempt)
            if self._on_lost is not None:
                try:
                    self._on_lost(lost, delay)
                except BaseException as e:
                    self._fail(e)
                    return
            with self._cond:  # the pause; cancel() ends it
                self._cond.wait_for(lambda: self._cancelled, delay)
            attempt += 1
            self.reconnects += 1

    def _on_reply(self, reply: pb.IngestReply) -> bool:
        """Handle one reply; True if it was Started (the stream is up). Raises _Broken
        if the reply breaks the contract."""
        kind = reply.WhichOneof("msg")
        events: list[AckEvent] = []
        with self._cond:
            if kind == "started":
                resume = reply.started.resume_from_seq
                count = self._count()
                if resume > count and self._source is None:
                    raise _Broken(
                        errors.ProtocolError(
                            f"call {self.call_id}: server resumes from batch {resume} but only "
                            f"{count} were sent",
                            method=_RECORD,
                        )
                    )
                self.started = reply.started
                self.connected = True
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
        if self._on_reply_cb is not None:
            self._on_reply_cb(reply)
        if self._on_ack is not None:
            for ev in events:
                self._on_ack(ev)
        return kind == "started"

    def _fail(self, e: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = e
            self._cond.notify_all()
