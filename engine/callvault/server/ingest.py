"""Live recording: a call's RTP batches in, durable records out (the server's Ingest).

A ``LiveCall`` owns one call being recorded: one ``LegPipeline`` per leg
(jitter buffer, G.711, DSP, Opus), the vault's ``CallWriter``, and the
bookkeeping that makes a stream resumable:

* Batches carry a per-call sequence number. A batch with a seq already
  processed is skipped (a resend after a reconnect); one beyond the next
  expected is refused: batches are processed in order, none missing.
* Records are cut at absolute frame positions, every ``FRAMES_PER_RECORD``
  frames of a leg (frames [50k, 50k + 50)), so where a record starts depends
  only on the timeline.
* The output depends only on the batches' content (the jitter buffer decides
  from packets and arrival times, never from the wall clock), so after a
  server restart the call is resumed by replaying its batches from seq 0:
  frames below each leg's durable position are recomputed (bit for bit the
  same) and not stored again; the rest is stored as it comes. ``Started``
  tells the client where to resend from.

``Ingestor`` is the registry of live calls of one server: a stream attaches
to a call (taking it over from a stale stream: reconnects), supervisors
follow a call's durable position (``wait_durable``), and shutdown makes what
every call has encoded durable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callvault import ids
from callvault.errors import InputError
from callvault.media.capture import LegBatch
from callvault.media.pipeline import FRAME, LegPipeline, Settings
from callvault.vault import FRAMES_PER_RECORD, Ack, CallWriter, Vault, VaultError

MAX_LEGS = 2


class StreamTakenOver(VaultError):
    """Another stream attached to this call (the client reconnected)."""


class OutOfOrder(InputError):
    pass


@dataclass(frozen=True)
class CallSpec:
    """What a CallStart says."""

    call_id: str
    tenant: str
    legs: tuple[str, ...]
    start_us: int = 0
    event_payload_types: tuple[tuple[int, ...], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        ids.check_call_id(self.call_id)
        if self.tenant:
            ids.check_call_id(self.tenant, "tenant")
        if not 1 <= len(self.legs) <= MAX_LEGS:
            raise InputError(f"a call has 1 or {MAX_LEGS} legs, not {len(self.legs)}")
        for name in self.legs:
            ids.check_leg_name(name)
        if len(set(self.legs)) != len(self.legs):
            raise InputError(f"leg names must differ: {', '.join(self.legs)}")
        if self.start_us < 0:
            raise InputError(f"start_us {self.start_us} is negative")
        for pts in self.event_payload_types:
            for pt in pts:
                if not 96 <= pt <= 127:
                    raise InputError(f"event payload type {pt}: dynamic types are 96 to 127")


@dataclass
class Progress:
    """What an Ack says."""

    seq: int
    durable_frames: list[int]
    chain_records: int
    chain_head: bytes


class LiveCall:
    """One call being recorded (see the module docstring)."""

    def __init__(
        self, vault: Vault, spec: CallSpec, settings: Settings, *, writer: CallWriter | None = None
    ) -> None:
        self.vault = vault
        self.spec = spec
        self.settings = settings
        self.tenant = spec.tenant or "default"
        self.lock = threading.RLock()  # batches, end: one at a time
        # The durable position, chain head, seal and error: a lock of their own, so
        # the vault's committer thread, which reports durability, never waits for a
        # batch being encoded under ``lock`` (one slow call would hold up every
        # call's acknowledgements); notified when they change.
        self.changed = threading.Condition()
        self.writer = writer
        self.resumed = writer is not None
        self.start_us = writer.entry.start_us if writer is not None else spec.start_us
        nlegs = len(spec.legs)
        # frames below these are durable already (a resumed call): recomputed, not stored
        self.skip = list(writer.frames) if writer is not None else [0] * nlegs
        self.durable = list(self.skip)
        self.chain_records = writer.entry.records if writer is not None else 0
        self.chain_head = writer.chain_head if writer is not None else b""
        self.encoded = [0] * nlegs  # frames encoded per leg (packets taken)
        self.pending: list[list[bytes]] = [[] for _ in range(nlegs)]
        self.pending_first = [0] * nlegs
        self.pipes: list[LegPipeline] | None = None
        self.next_seq = 0
        self.owner = 0  # the attached stream's token
        self.attachments = 0  # streams that attached so far
        self.sealed: tuple[bytes, int, int] | None = None  # (seal, frames, log index)
        self.last_future: Future[Ack] | None = None
        self.packets = 0
        self.error: BaseException | None = None

    # -- stream attachment -------------------------------------------------------------
    def check_owner(self, token: int) -> None:
        if token != self.owner:
            raise StreamTakenOver(
                f"call {self.spec.call_id}: another stream took over (the client reconnected)"
            )

    # -- batches -------------------------------------------------------------------------
    def process(self, token: int, batch: LegBatch) -> Future[Ack] | None:
        """Run one batch; returns the future of the last record appended so far (all
        earlier ones resolve before it), or None when nothing is pending."""
        with self.lock:
            self.check_owner(token)
            if self.sealed is not None:
                raise VaultError(f"call {self.spec.call_id} is sealed")
            if batch.seq < self.next_seq:
                return self.last_future  # a resend: already processed
            if batch.seq > self.next_seq:
                raise OutOfOrder(
                    f"batch {batch.seq} arrived but batch {self.next_seq} is "
                    "next (batches are sent in order, none skipped)"
                )
            if self.pipes is None:
                self._begin(self.start_us or batch.first_sample_us())
            assert self.pipes is not None
            offsets = np.zeros(len(batch.lengths), dtype=np.int64)
            np.cumsum(batch.lengths[:-1], out=offsets[1:])
            self.pipes[batch.leg].push_rtp(batch.packets, offsets, batch.lengths, batch.arrival_us)
            self.next_seq += 1
            self.packets += len(batch.lengths)
            self._take(batch.leg)
            return self.last_future

    def _begin(self, start_us: int) -> None:
        """The first batch (or an end with none): the timeline's origin is known, the
        call is opened in the vault (unless resumed) and the legs' pipelines made."""
        self.start_us = start_us
        m = self.spec.meta
        if self.writer is None:
            self.writer = self.vault.open_call(
                self.spec.call_id,
                tenant=self.tenant,
                start_us=self.start_us,
                direction=m.get("direction", ""),
                agent=m.get("agent", ""),
                skill_group=m.get("skill_group", ""),
                customer_number=m.get("customer_number", ""),
                tags=m.get("tags", ()),
                legs=self.spec.legs,
                extra=m.get("extra") or {},
            )
            self.chain_head = self.writer.chain_head
        pts = list(self.spec.event_payload_types) + [()] * len(self.spec.legs)
        self.pipes = [
            LegPipeline(
                name,
                "ingest",
                self.settings,
                call_start_us=self.start_us,
                event_payload_types=pts[i] or (101,),
            )
            for i, name in enumerate(self.spec.legs)
        ]

    def _take(self, leg: int, final: bool = False) -> None:
        """Move the leg's new Opus packets into records cut at multiples of 50 frames."""
        assert self.pipes is not None
        r = self.pipes[leg].result
        for data, lengths in r.packets:
            offs = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offs[1:])
            for i in range(len(lengths)):
                f = self.encoded[leg]
                self.encoded[leg] += 1
                if f < self.skip[leg]:
                    continue  # durable before a restart: recomputed, not stored twice
                if not self.pending[leg]:
                    self.pending_first[leg] = f
                self.pending[leg].append(data[offs[i] : offs[i + 1]])
                if (f + 1) % FRAMES_PER_RECORD == 0:
                    self._flush(leg)
        r.packets.clear()
        if final:
            self._flush(leg)

    def _flush(self, leg: int) -> None:
        if not self.pending[leg]:
            return
        assert self.writer is not None
        part = self.pending[leg]
        lengths = np.fromiter((len(p) for p in part), dtype=np.int32, count=len(part))
        fut = self.writer.append(leg, self.pending_first[leg], lengths, b"".join(part))
        self.pending[leg] = []
        fut.add_done_callback(self._on_durable)
        self.last_future = fut

    def _on_durable(self, fut: Future[Ack]) -> None:
        if fut.exception() is not None:
            with self.changed:
                self.error = fut.exception()
                self.changed.notify_all()
            return
        a = fut.result()
        with self.changed:
            self.durable[a.leg] = max(self.durable[a.leg], a.first_frame + a.frames)
            if a.chain_index + 1 > self.chain_records:
                self.chain_records = a.chain_index + 1
                self.chain_head = a.chain_head
            self.changed.notify_all()

    def progress(self, seq: int) -> Progress:
        with self.changed:
            return Progress(seq, list(self.durable), self.chain_records, self.chain_head)

    # -- end -------------------------------------------------------------------------------
    def end(self, token: int, batches: int, end_us: int = 0) -> tuple[bytes, int, int]:
        """Drain every leg, store the rest, seal: (seal, frames, log index)."""
        with self.lock:
            self.check_owner(token)
            if self.sealed is not None:
                return self.sealed
            if batches != self.next_seq:
                raise InputError(
                    f"CallEnd says {batches} batches were sent but the server has "
                    f"processed {self.next_seq}: send the missing ones first"
                )
            if self.pipes is None:  # a call with no RTP at all: an empty recording
                self._begin(self.start_us or end_us or time.time_ns() // 1000)
            assert self.pipes is not None and self.writer is not None
            total = max(p.drain(end_us or None) for p in self.pipes)
            summaries = []
            for leg, p in enumerate(self.pipes):
                p.finish(total_frames=total)
                self._take(leg, final=True)
                summaries.append(p.result.summary())
            writer = self.writer
        seal = writer.seal(
            summary={"legs": summaries}, frames=total, end_us=self.start_us + total * FRAME * 125
        )
        entry = self.vault.get_call(self.spec.call_id, tenant=self.tenant)
        with self.changed:
            self.durable = [total + 1] * len(self.durable)  # + the encoder flush packet
            self.sealed = (seal, total, entry.log_index)
            self.changed.notify_all()
            return self.sealed

    def flush_partial(self) -> None:
        """Shutdown: store every frame encoded so far (records shorter than 50 frames);
        what the jitter buffer still holds is replayed when the client resends."""
        with self.lock:
            if self.pipes is None or self.sealed is not None:
                return
            for leg in range(len(self.pipes)):
                self._take(leg, final=True)
            fut = self.last_future
        if fut is not None:
            fut.result()


class Ingestor:
    """The live calls of one server."""

    def process(self, live: LiveCall, token: int, batch: LegBatch) -> Future[Ack] | None:
        """LiveCall.process on a worker thread (see __init__); waits for it."""
        return self.workers.submit(live.process, token, batch).result()

    def __init__(self, vault: Vault, settings: Settings | None = None, *, workers: int = 0) -> None:
        self.vault = vault
        self.settings = settings or Settings()
        # Batches are processed (jitter buffer, DSP, Opus) on a few worker threads, not
        # on the RPC threads: with a thread per stream, dozens of threads taking turns
        # at the GIL around every libopus call made each batch wait for the GIL far
        # longer than it computed (a GIL convoy); a few workers keep the cores busy
        # and the hand-offs rare. Each stream waits for its own batch, so a call's
        # batches stay in order.
        self.workers = ThreadPoolExecutor(
            workers or (os.cpu_count() or 2) + 1, thread_name_prefix="ingest"
        )
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], LiveCall] = {}
        self._tokens = 0
        self.packets_total = 0
        self.batches_total = 0
        self.bytes_total = 0
        self._rate: list[tuple[float, int, int]] = []  # (time, packets, bytes) samples
        self.accepting = True

    def attach(self, spec: CallSpec) -> tuple[LiveCall, int]:
        """The call a CallStart names: live already (a reconnect: the new stream takes
        over), open in the vault (a restart: resumed, replayed from seq 0), sealed
        (nothing to do), or new."""
        spec.check()
        tenant = spec.tenant or "default"
        key = (tenant, spec.call_id)
        with self.lock:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down; retry in a moment")
            self._tokens += 1
            token = self._tokens
            live = self.calls.get(key)
            if live is None:
                entry = self.vault.index.get_call(tenant, spec.call_id)
                writer = None
                if entry is not None:
                    if list(entry.legs) != list(spec.legs):
                        raise InputError(
                            f"call {spec.call_id} exists with legs "
                            f"{', '.join(entry.legs)}, not {', '.join(spec.legs)}"
                        )
                    if entry.state != "open":
                        live = LiveCall(self.vault, spec, self.settings)
                        frames = (entry.end_us - entry.start_us) // (FRAME * 125)
                        live.sealed = (
                            bytes.fromhex(entry.seal) if entry.seal else b"",
                            frames,
                            entry.log_index,
                        )
                        live.owner = token
                        return live, token
                    writer = self.vault.resume_call(spec.call_id, tenant=tenant)
                live = LiveCall(self.vault, spec, self.settings, writer=writer)
                self.calls[key] = live
            elif list(live.spec.legs) != list(spec.legs):
                raise InputError(
                    f"call {spec.call_id} is being recorded with legs "
                    f"{', '.join(live.spec.legs)}, not {', '.join(spec.legs)}"
                )
        with live.lock:
            live.owner = token
            live.attachments += 1
        return live, token

    def count(self, packets: int, nbytes: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.packets_total += packets
            self.batches_total += 1
            self.bytes_total += nbytes
            self._rate.append((now, self.packets_total, self.bytes_total))
            while self._rate and now - self._rate[0][0] > 10.0:
                self._rate.pop(0)

    def rates(self) -> tuple[float, float]:
        """RTP packets and bytes per second over the last 10 s."""
        with self.lock:
            if len(self._rate) < 2:
                return 0.0, 0.0
            (t0, p0, b0), (t1, p1, b1) = self._rate[0], self._rate[-1]
        dt = max(t1 - t0, 1e-3)
        return (p1 - p0) / dt, (b1 - b0) / dt

    def finished(self, live: LiveCall) -> None:
        with self.lock:
            key = (live.tenant, live.spec.call_id)
            if self.calls.get(key) is live:
                del self.calls[key]

    def get(self, tenant: str, call_id: str) -> LiveCall | None:
        with self.lock:
            return self.calls.get((tenant or "default", call_id))

    def open_calls(self) -> int:
        with self.lock:
            return len(self.calls)

    def shutdown(self, on_error: Callable[[LiveCall, BaseException], None] | None = None) -> None:
        """Refuse new calls; store what every live call has encoded."""
        with self.lock:
            self.accepting = False
            calls = list(self.calls.values())
        for live in calls:
            try:
                live.flush_partial()
            except Exception as e:  # keep flushing the others
                if on_error is not None:
                    on_error(live, e)


class ShuttingDown(VaultError):
    pass
