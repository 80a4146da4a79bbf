"""The link to the server: ONE :class:`Uplink` per sidecar, a single long-lived
Ingest.RecordCalls stream carrying every call, and a :class:`Forwarder` per call (its
state on that stream; no thread of its own).

The per-call contract is Ingest.Record's (proto/callvault/v1/callvault.proto): a
CallStart, on Started every batch from ``resume_from_seq`` on, then live ones as they
are spooled, after the stop a CallEnd(batches = total); after any break the same
CallStart again and a resume. What the uplink does:

- the batches come from each call's spool, never from memory: what a restarted
  sidecar recovered is sent as if it had never stopped. The receive thread wakes the
  uplink after each flush (``Call.wake``); the uplink then waits out its window
  (``WINDOW_S`` since its last message) and sends every call's new batches together,
  in messages of at most ``MESSAGE_BYTES`` (``CALL_BYTES`` per call per message, so a
  call resending a long backlog does not hold the others up);
- a call is bound to a slot by its CallStart; a slot is never reused on a stream;
- a call's error the server may get over (``RETRIED``: UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN, CANCELLED) means
  that call backs off (``BACKOFF_S``: 0.1 s doubling to 2 s, with jitter, back to 0.1 s
  after a Started) and is started again on a new slot, forever, while the receiver
  keeps spooling; the other calls go on. The stream itself breaking (the server gone,
  restarting, shutting down, or the stream ending) backs the uplink off the same way
  and re-sends every call's CallStart on a new stream; the same loss is logged once,
  not once per retry;
- any other status is the server's refusal of that call for good
  (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, NOT_FOUND, OUT_OF_RANGE,
  PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED, DATA_LOSS): never retried, the
  call ends (:meth:`callvault.sidecar.daemon.Sidecar.refused`) with the server's
  message as its reason; so does a Sealed that comes while the call is still
  receiving (the server had sealed that call id before: its CallEnd was never ours);
- each Ack is noted in the spool's ``acked`` hint (ListCalls); on Sealed the spool
  is deleted (:meth:`callvault.sidecar.daemon.Sidecar.sealed`), and only then;
- with no call to forward for ``IDLE_CLOSE_S`` the uplink half-closes its stream and
  opens a new one when a call comes.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from callvault_client import errors
from callvault_client._pb import callvault_pb2 as pb

from callvault.sidecar.call import Call
from callvault.sidecar.spool import CONTROL_LEGS, LEG_PAUSE, Spool

if TYPE_CHECKING:
    from callvault.sidecar.daemon import Sidecar

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 2.0)  # reconnect backoff (the stream, and each call): first, largest
WINDOW_S = 0.04  # the uplink sends at most one round of messages per window
MESSAGE_BYTES = 1 << 20  # one IngestMux message at most (the server's limit is 8 MiB)
CALL_BYTES = 256 << 10  # one call's batches in one message at most
ROUND_BYTES = 4 << 20  # one round's messages at most (the rest in the next round)
IDLE_CLOSE_S = 5.0  # no call this long: the stream is half-closed
POLL_S = 0.5  # how often a waiting uplink rechecks its calls' retry times
_METHOD = "/callvault.v1.Ingest/RecordCalls"


class SpoolSource:
    """A call's spool as RtpBatch messages."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def count(self) -> int:
        return self.spool.batches

    def batch(self, seq: int) -> pb.RtpBatch:
        out = pb.RtpBatch()
        self.fill(out, seq)
        return out

    def fill(self, out: pb.RtpBatch, seq: int) -> int:
        """Batch ``seq`` into ``out``; its size on the wire, roughly."""
        b = self.spool.read(seq)
        out.seq = b.seq
        out.leg = b.leg
        out.packets = b.packets
        out.lengths.extend(b.lengths.tolist())
        out.arrival_us.extend(b.arrival_us.tolist())
        return len(b.packets) + 12 * len(b.lengths) + 16

    def fill_item(self, item: pb.IngestMuxItem, seq: int) -> int:
        """Item ``seq`` of the call's sequence into ``item``: its batch, or a PCI Pause
        or Resume (a spooled control record, docs/format.md 9); its size, roughly."""
        b = self.spool.read(seq)
        if b.leg in CONTROL_LEGS:
            (at_us,) = struct.unpack("<q", b.packets)
            ctl = item.pause if b.leg == LEG_PAUSE else item.resume
            ctl.seq, ctl.at_us = b.seq, at_us
            return 24
        out = item.batch
        out.seq = b.seq
        out.leg = b.leg
        out.packets = b.packets
        out.lengths.extend(b.lengths.tolist())
        out.arrival_us.extend(b.arrival_us.tolist())
        return len(b.packets) + 12 * len(b.lengths) + 16

    def end(self) -> pb.CallEnd | None:
        end = self.spool.end
        return None if end is None else pb.CallEnd(batches=end.batches, end_us=end.end_us)


# The statuses a call is started again after (the server may get over them); any
# other is a refusal of the call for good.
RETRIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
LOG_AGAIN_S = 60.0  # the same loss is logged again after this long


def retryable(e: errors.CallvaultClientError) -> bool:
    """Whether a call is started again after ``e`` (a ProtocolError, the stream ended
    without Sealed, is: a server shutting down does that)."""
    return isinstance(e, errors.ProtocolError) or e.code in RETRIED


class Forwarder:
    """One call on the uplink: its slot, where its resend stands, its retries. The
    uplink's lock guards every field."""

    def __init__(self, uplink: Uplink, call: Call) -> None:
        self.uplink = uplink
        self.call = call
        self.source = SpoolSource(call.spool)
        self.state = "idle"  # idle (to start) -> starting -> up; done when it ended here
        self.slot = -1
        self.cursor = 0  # the next batch to send (state up)
        self.end_sent = False
        self.retry_at = 0.0  # idle: not started again before this (time.monotonic)
        self.attempt = 0  # losses since the last Started (the backoff's exponent)
        self.starts = 0  # CallStarts sent for this call (every stream, every retry)
        self._last_loss: tuple[str, float] | None = None  # (what, when) last logged
        # the server's Started said the call is not recorded (its policy): its Sealed
        # (which follows at once) drops the call instead of sealing it
        self.decision: pb.CallDecision | None = None

    @property
    def connected(self) -> bool:
        """The uplink is up and the server Started this call on it."""
        return self.state == "up"

    def start(self) -> None:
        self.uplink.add(self)

    def wake(self) -> None:
        """The spool grew or ended."""
        self.uplink.wake()

    def stop(self) -> None:
        """Forward no more (the call failed, or the sidecar stops; the spool stays)."""
        self.uplink.remove(self)

    def lost(self, what: str, delay: float) -> None:
        """(uplink lock) Log a loss of this call, once per kind of loss."""
        now = time.monotonic()
        last = self._last_loss
        if last is not None and last[0] == what and now - last[1] < LOG_AGAIN_S:
            return
        self._last_loss = (what, now)
        log.warning(
            "%s: call lost on the uplink (%s); starting it again (first in %.1f s, then "
            "backing off to %.0f s)",
            self.call.call_id,
            what,
            delay,
            BACKOFF_S[1],
        )


class Uplink:
    """The sidecar's one RecordCalls stream (see the module docstring): a thread that
    opens it and reads its replies; grpcio's thread pulls the messages from
    ``_messages``."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.rpc = sidecar.client._rpc
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # a call came, or the uplink closes
        self.wakeup = threading.Event()  # something to send (or a retry time passed)
        self.calls: list[Forwarder] = []
        self.slots: dict[int, Forwarder] = {}  # slot -> forwarder, this stream's
        self.leaving: list[int] = []  # slots to let go on this stream (IngestMuxLeave)
        self.epoch = 0  # which stream is current; an older stream's generator stops
        self.half_closed = 0  # the epoch of the last stream we half-closed (no call)
        self.next_slot = 0
        self.closed = False
        self.streams = 0  # streams opened
        self.up = False  # the current stream got a reply
        self._call: grpc.Call | None = None
        self._last_loss: tuple[str, float] | None = None
        self._thread = threading.Thread(target=self._run, name="sidecar-uplink", daemon=True)
        self._thread.start()

    # -- the calls -------------------------------------------------------------------
    def add(self, f: Forwarder) -> None:
        with self.lock:
            if self.closed or f in self.calls:
                return
            self.calls.append(f)
            self.ready.notify_all()
        self.wakeup.set()

    def remove(self, f: Forwarder) -> None:
        """Forward the call no more; a call the server holds on this stream is let go
        (an IngestMuxLeave: it stays open there, detached, as when a stream closes)."""
        with self.lock:
            if f.state in ("starting", "up") and self.slots.get(f.slot) is f:
                self.leaving.append(f.slot)
            self._drop(f)
        self.wakeup.set()

    def _drop(self, f: Forwarder) -> None:
        """(lock) The call is no longer forwarded (sealed, refused, failed, stopped)."""
        if f in self.calls:
            self.calls.remove(f)
        if self.slots.get(f.slot) is f:
            del self.slots[f.slot]
        f.state = "done"

    def wake(self) -> None:
        self.wakeup.set()

    def close(self) -> None:
        """The sidecar stops: the stream is cancelled (the spools stay)."""
        with self.lock:
            self.closed = True
            call = self._call
            self.ready.notify_all()
        self.wakeup.set()
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)

    # -- the stream ------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while True:
            with self.lock:
                while not self.calls and not self.closed:
                    self.ready.wait()
                if self.closed:
                    return
                self.epoch += 1
                epoch = self.epoch
                self.slots.clear()
                self.leaving.clear()
                for f in self.calls:  # every call starts again on the new stream
                    f.state, f.retry_at = "idle", 0.0
                self.up = False
                call = self.rpc.bidi(_METHOD, self._messages(epoch), pb.IngestMuxReply)
                self._call = call
                self.streams += 1
            lost: errors.CallvaultClientError | None = None
            try:
                for reply in call:
                    if self._on_reply(reply):
                        attempt = 0
            except grpc.RpcError as e:
                lost = errors.from_rpc_error(e, _METHOD)
            except BaseException:  # a bug: say so, and keep the sidecar forwarding
                log.exception("uplink: handling a reply failed")
                call.cancel()
                lost = errors.Internal("the uplink failed handling a reply", method=_METHOD)
            with self.lock:
                self.epoch += 1  # the old stream's generator stops
                self.up = False
                self._call = None
                for f in self.calls:
                    f.state = "idle"
                if self.closed:
                    return
                if lost is None and self.half_closed == epoch and not self.calls:
                    continue  # we half-closed with nothing to forward: wait for a call
            if lost is None and self.half_closed == epoch:
                delay = self.rpc.backoff.delay(0)  # a call came as we half-closed
            else:
                if lost is None:
                    lost = errors.ProtocolError(
                        "the server ended the uplink stream", method=_METHOD
                    )
                delay = self.rpc.backoff.delay(attempt)
                self._log_loss(lost, delay)
            with self.lock:  # the pause; close() ends it
                self.ready.wait_for(lambda: self.closed, delay)
            attempt += 1

    def _log_loss(self, e: errors.CallvaultClientError, delay: float) -> None:
        if self.sidecar.closing.is_set():
            return
        what = f"{e.code.name}: {e.message}"
        now = time.monotonic()
        last = self._last_loss
        if last is not None and last[0] == what and now - last[1] < LOG_AGAIN_S:
            return
        self._last_loss = (what, now)
        if e.code == grpc.StatusCode.UNIMPLEMENTED:
            # a server older than this sidecar: no Ingest.RecordCalls. Nothing is lost
            # (the spools keep every call) but nothing lands until the server is upgraded.
            log.error(
                "uplink: the server does not serve Ingest.RecordCalls (%s): it is older "
                "than this sidecar; upgrade it. Calls stay spooled and are forwarded "
                "once it does (retrying every %.0f s)",
                what,
                BACKOFF_S[1],
            )
            return
        log.warning(
            "uplink: stream lost (%s); reconnecting (first in %.1f s, then backing off to %.0f s)",
            what,
            delay,
            BACKOFF_S[1],
        )

    def _messages(self, epoch: int) -> Iterator[pb.IngestMux]:
        """The stream's messages: each round, every call's CallStart, new batches or
        CallEnd due; half-closed after IDLE_CLOSE_S with no call."""
        last = 0.0
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            with self.lock:
                if self.epoch != epoch or self.closed:
                    return
                if not self.calls:
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= IDLE_CLOSE_S:
                        self.half_closed = epoch
                        return
                else:
                    idle_since = None
                retry = min(
                    (f.retry_at for f in self.calls if f.state == "idle"), default=now + POLL_S
                )
            if not self.wakeup.wait(max(0.0, min(POLL_S, retry - now))) and retry > now:
                continue
            pause = last + WINDOW_S - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.wakeup.clear()
            last = time.monotonic()
            messages, more = self._round(epoch)
            if more:
                self.wakeup.set()
            yield from messages

    def _round(self, epoch: int) -> tuple[list[pb.IngestMux], bool]:
        """One round's messages; whether something was left for the next round."""
        now = time.monotonic()
        plan: list[tuple[Forwarder, int, int, int, pb.CallEnd | None]] = []
        starts: list[tuple[int, pb.CallStart]] = []
        with self.lock:
            if self.epoch != epoch:
                return [], False
            leaving, self.leaving = self.leaving, []
            for f in self.calls:
                if f.state == "idle" and f.retry_at <= now:
                    self.next_slot += 1
                    f.slot, f.state, f.end_sent = self.next_slot, "starting", False
                    f.starts += 1
                    self.slots[f.slot] = f
                    starts.append((f.slot, f.call.call_start()))
                elif f.state == "up" and not f.end_sent:
                    count = f.source.count()
                    lo = f.cursor
                    f.cursor = max(lo, count)
                    end = f.source.end()
                    if end is not None and f.cursor >= end.batches:
                        f.end_sent = True
                    else:
                        end = None
                    if lo < count or end is not None:
                        plan.append((f, f.slot, lo, count, end))
        messages: list[pb.IngestMux] = []
        msg = pb.IngestMux()
        size = 0
        total = 0
        more = False
        for slot in leaving:
            msg.items.add(slot=slot, leave=pb.IngestMuxLeave())
        for slot, start in starts:
            msg.items.add(slot=slot, start=start)
            size += start.ByteSize() + 8
        for f, slot, lo, hi, end in plan:
            seq = lo
            mine = 0
            while seq < hi and mine < CALL_BYTES and total < ROUND_BYTES:
                if size >= MESSAGE_BYTES:
                    messages.append(msg)
                    msg, size = pb.IngestMux(), 0
                item = msg.items.add(slot=slot)
                try:
                    n = f.source.fill_item(item, seq)
                except Exception as e:  # the spool went (sealed, failed) meanwhile
                    del msg.items[-1]
                    log.debug("%s: batch %d not read: %s", f.call.call_id, seq, e)
                    break
                size += n
                mine += n
                total += n
                seq += 1
            if seq < hi:  # the rest in the next round
                more = True
                with self.lock:
                    if self.slots.get(slot) is f and f.state == "up":
                        f.cursor = min(f.cursor, seq)
                        f.end_sent = False
                continue
            if end is not None:
                msg.items.add(slot=slot, end=end)
        if len(msg.items):
            messages.append(msg)
        return messages, more

    # -- replies ---------------------------------------------------------------------
    def _on_reply(self, reply: pb.IngestMuxReply) -> bool:
        """Handle one reply; True if it Started a call (the stream works)."""
        started = False
        sealed: list[tuple[Forwarder, pb.Sealed]] = []
        refused: list[tuple[Forwarder, str]] = []
        acked: list[tuple[Forwarder, int]] = []
        with self.lock:
            self.up = True
            for ev in reply.events:
                f = self.slots.get(ev.slot)
                if f is None:
                    continue  # a call that ended or was dropped here meanwhile
                kind = ev.WhichOneof("msg")
                if kind == "ack":
                    acked.append((f, ev.ack.seq + 1))
                elif kind == "started":
                    started = True
                    self._started(f, ev.started)
                elif kind == "sealed":
                    self._drop(f)
                    sealed.append((f, ev.sealed))
                elif kind == "error":
                    e = errors.from_status(ev.error.code, ev.error.message, _METHOD)
                    del self.slots[f.slot]
                    if retryable(e) or self.closed:
                        delay = self.rpc.backoff.delay(f.attempt)
                        f.state, f.retry_at = "idle", time.monotonic() + delay
                        f.attempt += 1
                        if not self.sidecar.closing.is_set():
                            f.lost(f"{e.code.name}: {e.message}", delay)
                    else:
                        self._drop(f)
                        refused.append(
                            (f, f"the server refused the call: {e.code.name}: {e.message}")
                        )
        for f, n in acked:
            f.call.spool.set_acked(n)
        for f, reason in refused:
            self.sidecar.refused(f.call, reason)
        for f, s in sealed:
            if f.decision is not None:  # not recorded: RTP dropped, spool deleted
                self.sidecar.not_recorded(f.call, f.decision)
            elif f.call.state == "receiving":
                # Our CallEnd was never sent: the server had this call id sealed already.
                self.sidecar.refused(
                    f.call,
                    f"the server has call {f.call.call_id} sealed already "
                    f"({s.frames} frames per leg, log index {s.log_index}); use a new call id",
                )
            else:
                self.sidecar.sealed(f.call, s)
        return started

    def _started(self, f: Forwarder, started: pb.Started) -> None:
        """(lock) The server Started the call on this stream: resend from its resume."""
        call = f.call
        if started.HasField("decision") and not started.decision.recorded:
            f.decision = started.decision
        resume = started.resume_from_seq
        if resume > call.spool.batches:
            # a spool that lost its unsynced tail (power cut) while the server kept what
            # it was sent: the call waits for the spool to grow to it
            log.error(
                "%s: server says resume from batch %d, the spool has %d",
                call.call_id,
                resume,
                call.spool.batches,
            )
        log.info("%s: started, resume from %d (resumed=%s)", call.call_id, resume, started.resumed)
        f.state, f.cursor, f.end_sent, f.attempt = "up", resume, False, 0
        self.wakeup.set()
