"""The link to the server: one :class:`Forwarder` per call, the SDK's
:class:`callvault_client.Recording` reading the call's spool.

The Ingest.Record resume protocol (CallStart, then on Started every batch from
``resume_from_seq`` on, then live ones as they are spooled; after the stop,
CallEnd(batches = total); a new stream with the same CallStart after any
break) is the SDK's, kept once, in ``callvault_client.recording``. What the
sidecar adds here:

- the batches come from the spool (:class:`SpoolSource`), never from memory:
  what a restarted sidecar recovered is sent as if it had never stopped, and
  the receive thread wakes the recording after each flush;
- a stream error the server may get over (``RETRIED``: UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN, CANCELLED, a
  stream ended without Sealed) means back off (``BACKOFF_S``: 0.1 s doubling to 2 s,
  with jitter, back to 0.1 s after a Started) and reconnect, forever, while the
  receiver keeps spooling; the same loss is logged once, not once per retry;
- any other status is the server's refusal for good (INVALID_ARGUMENT,
  FAILED_PRECONDITION, ALREADY_EXISTS, NOT_FOUND, OUT_OF_RANGE, PERMISSION_DENIED,
  UNAUTHENTICATED, UNIMPLEMENTED, DATA_LOSS): never retried, the call ends
  (:meth:`callvault.sidecar.daemon.Sidecar.refused`) with the server's message as its
  reason; so does a Sealed that comes while the call is still receiving (the server
  had sealed that call id before: its CallEnd was never ours);
- each Ack is noted in the spool's ``acked`` hint (ListCalls); on Sealed the
  spool is deleted (:meth:`callvault.sidecar.daemon.Sidecar.sealed`), and only
  then.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import grpc
from callvault_client import errors
from callvault_client._pb import callvault_pb2 as pb
from callvault_client.recording import Recording

from callvault.sidecar.call import Call
from callvault.sidecar.spool import Spool

if TYPE_CHECKING:
    from callvault.sidecar.daemon import Sidecar

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 2.0)  # forwarder reconnect backoff: first, largest


class SpoolSource:
    """A call's spool as the batches of a Recording (``callvault_client.recording.BatchSource``)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def count(self) -> int:
        return self.spool.batches

    def batch(self, seq: int) -> pb.RtpBatch:
        b = self.spool.read(seq)
        return pb.RtpBatch(
            seq=b.seq,
            leg=b.leg,
            packets=b.packets,
            lengths=b.lengths.tolist(),
            arrival_us=b.arrival_us.tolist(),
        )

    def end(self) -> pb.CallEnd | None:
        end = self.spool.end
        return None if end is None else pb.CallEnd(batches=end.batches, end_us=end.end_us)


# The statuses a stream is reopened after (the server may get over them); any
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
LOG_AGAIN_S = 60.0  # the same stream loss is logged again after this long


def retryable(e: errors.CallvaultClientError) -> bool:
    """Whether the stream is reopened after ``e`` (a ProtocolError, the stream ended
    without Sealed, is: a server shutting down does that)."""
    return isinstance(e, errors.ProtocolError) or e.code in RETRIED


class Forwarder:
    """Forward one call to the server until it is sealed, reconnecting forever."""

    def __init__(self, sidecar: Sidecar, call: Call) -> None:
        self.sidecar = sidecar
        self.call = call
        self.recording: Recording | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._last_loss: tuple[str, float] | None = None  # (what, when) last logged

    @property
    def connected(self) -> bool:
        """A stream to the server is up (Started, not broken since)."""
        return self.recording is not None and self.recording.connected

    def start(self) -> None:
        with self._lock:
            if self._stopped or self.recording is not None:
                return
            self.recording = self.sidecar.client.record_from(
                self.call.call_start(),
                source=SpoolSource(self.call.spool),
                reconnect_timeout=None,
                retry=self._retry,
                on_reply=self._on_reply,
                on_lost=self._on_lost,
            )

    def wake(self) -> None:
        """The spool grew or ended."""
        if self.recording is not None:
            self.recording.wake()

    def stop(self) -> None:
        """The sidecar stops: cancel the stream (the spool stays for the next start)."""
        with self._lock:
            self._stopped = True
            recording = self.recording
        if recording is not None:
            recording.cancel()

    def _on_reply(self, reply: pb.IngestReply) -> None:
        call = self.call
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
        elif kind == "ack":
            call.spool.set_acked(reply.ack.seq + 1)
        elif kind == "sealed":
            if call.state == "receiving":
                # Our CallEnd was never sent: the server had this call id sealed already.
                self.sidecar.refused(
                    call,
                    f"the server has call {call.call_id} sealed already "
                    f"({reply.sealed.frames} frames per leg, log index "
                    f"{reply.sealed.log_index}); use a new call id",
                )
            else:
                self.sidecar.sealed(call, reply.sealed)

    def _retry(self, e: errors.CallvaultClientError) -> bool:
        if retryable(e) or self._stopped:
            return True
        self.sidecar.refused(self.call, f"the server refused the call: {e.code.name}: {e.message}")
        return False

    def _on_lost(self, e: errors.CallvaultClientError, delay: float) -> None:
        if self.sidecar.closing.is_set():
            return
        what = f"{e.code.name}: {e.message}"
        now = time.monotonic()
        last = self._last_loss
        if last is not None and last[0] == what and now - last[1] < LOG_AGAIN_S:
            return
        self._last_loss = (what, now)
        log.warning(
            "%s: stream lost (%s); retrying (first in %.1f s, then backing off to %.0f s)",
            self.call.call_id,
            what,
            delay,
            BACKOFF_S[1],
        )
