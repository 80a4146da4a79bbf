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
* A batch's audio work is one C call (``LegPipeline.push_batch``, ext/_leg.pyx)
  with the GIL released, under the call's own lock: calls processed on
  different threads use different cores. Encoded packets wait in the pipeline
  until a record is full (``_take``); nothing per packet is made in Python.

``Ingestor`` is the registry of live calls of one server: a stream attaches
to a call (taking it over from a stale stream: reconnects), supervisors
follow a call's durable position (``wait_durable``), and shutdown makes what
every call has encoded durable. Its bounds (``Limits``, docs/server.md
"Limits"): at most ``max_open_calls`` calls at once; a call that received no
batch within ``call_idle_s`` of its CallStart expires (nothing of it was
stored); a call with audio whose stream is gone is kept ``resume_s`` for a
reconnect, then sealed with everything the server processed (acknowledged
audio is never dropped). ``reap`` applies the two time bounds; the server runs
it every second. A call whose storing failed (the vault's segment writer
failed: ``LiveCall.interrupted``) answers its stream UNAVAILABLE; the next
CallStart of the same recording, once the writer works again, replaces it by a
call resumed from the vault's stored records (replayed from seq 0, as after a
restart), so nothing acknowledged is lost and nothing is stored twice.

PCI pause (docs/format.md 1.2): a ``Control`` (Ingest Pause / Resume) takes a seq of
the batch sequence, so it is processed in order with the batches, resent and replayed
with them. ``LiveCall`` keeps the call's pauses; a batch's packets that arrived
within one are discarded before the jitter buffer sees them, and the pipelines
store the span's frames as silence (``LegPipeline.set_paused``) from the first
frame not yet processed, so the span sealed in the summary (``paused``) is exactly
the frames that were silenced, on every leg.

``CallSession`` is one call's state machine on one stream, in the engine's
terms (requests ``CallSpec``, ``Batch``, ``End``; replies ``Started``,
``Progress`` = an Ack, ``Sealed``): the first request is a CallStart, batches
go to the call in order, acks are coalesced, an End seals. ``RecordStream`` is
a Record stream (one session); ``MuxStream`` a RecordCalls stream (a session
per slot, many calls; a call's error fails its slot only, ``CallFailed``).
The servicer only turns proto messages into these and back, and errors into
status codes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import numpy as np

from callvault import ids
from callvault.errors import CallvaultError, InputError
from callvault.lifecycle.rules import RECORD_ALL, CallFacts, Decision, RecordingPolicy
from callvault.media.batch import MAX_LEADING_SILENCE_US, LegBatch
from callvault.media.packets import PacketRun
from callvault.media.pipeline import LegPipeline, Settings
from callvault.rtpdefs import RECORDED_CODECS
from callvault.timeline import FRAME_US, FRAMES_PER_RECORD, frames_us
from callvault.vault import Ack, CallWriter, Vault, VaultError
from callvault.vault.keys import TenantErased

MAX_LEGS = 2
WAITERS = 64  # threads on which RecordCalls' calls wait for the committer (Ingestor.waiters)

log = logging.getLogger("callvault.server")


class StreamTakenOver(VaultError):
    """Another stream attached to this call (the client reconnected)."""


class OutOfOrder(InputError):
    pass


class TooManyCalls(CallvaultError):
    """The server records ``max_open_calls`` calls already."""


class VolumeFull(TooManyCalls):
    """The data volume is at or above its capacity floor (lifecycle.capacity): new
    calls are refused (RESOURCE_EXHAUSTED, as TooManyCalls); calls being recorded
    go on."""


class WriterFailed(CallvaultError):
    """The vault's segment writer has failed: nothing can be stored until it works."""


def check_writer(vault: Vault) -> None:
    """WriterFailed while the vault cannot write (``Vault.writer_error``): a write is
    refused up front rather than reported failed after part of it was applied."""
    why = vault.writer_error
    if why is not None:
        raise WriterFailed(
            f"the vault cannot store anything now ({why}); the server is NOT_SERVING "
            "until writing works again: retry later"
        )


class CallInterrupted(WriterFailed):
    """Storing a live call failed (the segment writer failed): what the call encoded
    past its durable records is gone from this server's memory; a new CallStart
    resumes it from the stored records (``Vault.resume_call``) and the client's
    resend from ``Started.resume_from_seq`` completes it."""


def interrupted_text(call_id: str, why: str) -> str:
    return (
        f"call {call_id}: storing it failed ({why}); nothing acknowledged is lost: "
        "reconnect with the same CallStart once the server is SERVING again and resend "
        "from Started.resume_from_seq (the call resumes from what was stored)"
    )


class CallExpired(CallvaultError):
    """The call was opened but no batch came within ``call_idle_s``: forgotten."""


class RecordingConflict(InputError):
    """A CallStart names a call that another recording made (or is making)."""


@dataclass(frozen=True)
class Limits:
    """The Ingestor's bounds (docs/server.md "Limits")."""

    max_open_calls: int = 1000  # calls being recorded at once (RESOURCE_EXHAUSTED beyond)
    call_idle_s: float = 60.0  # a call with no batch this long after its CallStart expires
    resume_s: float = 3600.0  # a call with audio and no stream this long is sealed


@dataclass(frozen=True)
class CallSpec:
    """What a CallStart says."""

    call_id: str
    tenant: str
    legs: tuple[str, ...]
    start_us: int = 0
    event_payload_types: tuple[tuple[int, ...], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    # the client's identity of this recording (the same on every reconnect); "" = none
    recording_id: str = ""
    # for the recording policy (lifecycle.rules): the call's region and consent
    region: str = ""
    consent: str = "unknown"  # granted | declined | unknown

    def facts(self) -> CallFacts:
        m = self.meta
        return CallFacts(
            tenant=self.tenant or "default",
            call_id=self.call_id,
            direction=str(m.get("direction", "")),
            agent=str(m.get("agent", "")),
            skill_group=str(m.get("skill_group", "")),
            customer_number=str(m.get("customer_number", "")),
            region=self.region,
            consent=self.consent,
        )

    def check(self) -> None:
        """Every field against its rule and bound (ids.py), before anything is kept."""
        ids.check_call_id(self.call_id)
        if self.tenant:
            ids.check_call_id(self.tenant, "tenant")
        ids.check_text(self.recording_id, "recording_id", ids.MAX_RECORDING_ID_BYTES)
        ids.check_meta(self.meta)
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


DTMF_POLICY_KEYS = ("mask", "keep_digits")


class DtmfSettings(TypedDict):
    """The Settings fields of the [dtmf] policy section."""

    mask_dtmf: bool
    keep_digits: bool


def dtmf_settings(section: Any) -> DtmfSettings:
    """The ``[dtmf]`` policy section (Config.policy["dtmf"]; docs/access.md "PCI") as
    Settings fields: ``mask`` (default true: in-band DTMF is masked in the stored
    audio) and ``keep_digits`` (default false: the summary keeps where DTMF occurred,
    never the digits). InputError for anything else."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise InputError("policy [dtmf] must be a table (mask, keep_digits)")
    unknown = sorted(set(section) - set(DTMF_POLICY_KEYS))
    if unknown:
        raise InputError(
            f"policy [dtmf]: unknown key(s) {', '.join(unknown)} (expected mask, keep_digits)"
        )
    mask, keep = section.get("mask", True), section.get("keep_digits", False)
    for key, value in zip(DTMF_POLICY_KEYS, (mask, keep), strict=True):
        if not isinstance(value, bool):
            raise InputError(f"policy [dtmf] {key} = {value!r}: expected true or false")
    return DtmfSettings(mask_dtmf=mask, keep_digits=keep)


@dataclass(frozen=True)
class Control:
    """An Ingest Pause (``pause`` True) or Resume: a seq of the batch sequence and the
    instant (the clock of arrival_us; 0 = the latest arrival processed)."""

    seq: int
    pause: bool
    at_us: int = 0


@dataclass
class Pause:
    """One PCI pause of a live call: instants (µs, the arrival clock) and the frame
    span it silences (``start`` None until the timeline's origin is known; ``end``
    None while paused)."""

    at_us: int
    until_us: int | None = None
    start: int | None = None
    end: int | None = None


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
        # frames per leg whose packets were taken from the pipeline (stored, or skipped
        # as durable before a restart); the packets after them wait in the pipeline
        # (LegPipeline.take_packets) until a record is full
        self.encoded = [0] * nlegs
        self.pipes: list[LegPipeline] | None = None
        self.next_seq = 0
        self.owner = 0  # the attached stream's token
        self.attachments = 0  # streams that attached so far
        self.sealed: tuple[bytes, int, int] | None = None  # (seal, frames, log index)
        # the recording policy's decision (kept in the OPEN record); a call not recorded
        # is never live: attach answers it as sealed (seal b"", its DECISION leaf)
        self.decision: Decision | None = None
        self.last_future: Future[Ack] | None = None
        self.packets = 0
        self.error: BaseException | None = None
        # for Ingestor.reap: whether a stream is attached, since when it is not (or
        # since the CallStart), and why the call was let go (None while it is live)
        self.attached = False
        self.touched = time.monotonic()
        self.expired: str | None = None
        # packets per leg in a codec callvault does not record (WARNING once per call)
        self.unsupported = [0] * nlegs
        self.unsupported_frames = 0  # sealed as unsupported codec (known at the seal)
        # why storing the call failed (the segment writer failed), None while it works:
        # this LiveCall is then done for; Ingestor.attach replaces it by one resumed
        # from the vault (the durable records), which the client's resend completes
        self.failed: str | None = None
        # PCI pauses in order (the last one open while paused), the latest arrival
        # processed (a Pause or Resume at 0 means then) and the packets discarded
        self.pauses: list[Pause] = []
        self.last_arrival_us = 0
        self.paused_packets = 0

    def interrupted(self) -> str | None:
        """Why this call can no longer be written (``failed``, a record that did not
        become durable, or its CallWriter broken by ``Vault.reopen_writer``); None
        while it can."""
        if self.failed is not None:
            return self.failed
        if self.error is not None:
            return str(self.error)
        if self.writer is not None and self.writer.broken is not None:
            return self.writer.broken
        return None

    def _interrupt(self, why: str) -> CallInterrupted:
        """Mark the call failed; the error to raise to its stream."""
        if self.failed is None:
            self.failed = why
            log.warning("call %s/%s: %s", self.tenant, self.spec.call_id, why)
        return CallInterrupted(interrupted_text(self.spec.call_id, self.failed))

    def _check_writable(self) -> None:
        """CallInterrupted when the call cannot be written any more: the vault's
        segment writer failed (its unacknowledged records are lost) or did so before."""
        why = self.interrupted()
        if why is None and self.vault.writer_error is not None and self.writer is not None:
            why = self.vault.writer_error
        if why is not None:
            raise self._interrupt(why)

    # -- stream attachment -------------------------------------------------------------
    def check_owner(self, token: int) -> None:
        if token != self.owner:
            raise StreamTakenOver(
                f"call {self.spec.call_id}: another stream took over (the client reconnected)"
            )

    # -- batches -------------------------------------------------------------------------
    def _admit(self, token: int, seq: int, what: str) -> bool:
        """Under ``self.lock``: whether item ``seq`` of the call's sequence (a batch,
        a pause, a resume) is the next to process; False for a resend (processed
        already). Refuses another stream's token, an expired or sealed call, a
        failed writer and a gap in the sequence."""
        self.check_owner(token)
        if self.expired is not None:
            raise CallExpired(self.expired)
        if self.sealed is not None:
            raise VaultError(f"call {self.spec.call_id} is sealed")
        if seq < self.next_seq:
            return False
        self._check_writable()
        if seq > self.next_seq:
            raise OutOfOrder(
                f"{what} {seq} arrived but batch {self.next_seq} is next (batches are "
                "sent in order, none skipped)"
            )
        return True

    def process(self, token: int, batch: LegBatch) -> Future[Ack] | None:
        """Run one batch; returns the future of the last record appended so far (all
        earlier ones resolve before it), or None when nothing is pending."""
        with self.lock:
            if not self._admit(token, batch.seq, "batch"):
                return self.last_future  # a resend: already processed
            if self.pipes is None:
                first_us = batch.first_sample_us()
                if self.writer is None and self.start_us:
                    lead = first_us - self.start_us
                    if lead > MAX_LEADING_SILENCE_US:
                        raise InputError(
                            f"start_us is {lead / 1e6:.0f} s before the call's first audio "
                            f"sample: at most {MAX_LEADING_SILENCE_US // 1_000_000} s "
                            "(0 lets the server take the first sample's time)"
                        )
                self._begin(self.start_us or first_us)
            assert self.pipes is not None
            self.last_arrival_us = max(self.last_arrival_us, int(batch.arrival_us.max()))
            batch = self._unpaused(batch)
            if len(batch.lengths):
                self.pipes[batch.leg].push_batch(batch.packets, batch.lengths, batch.arrival_us)
            self._check_codec(batch.leg)
            self.next_seq += 1
            self.packets += len(batch.lengths)
            self._take(batch.leg)
            return self.last_future

    def _unpaused(self, batch: LegBatch) -> LegBatch:
        """The batch without its packets that arrived within a pause (discarded before
        the jitter buffer decodes anything of them)."""
        if not self.pauses:
            return batch
        at = batch.arrival_us
        drop = np.zeros(len(at), dtype=np.bool_)
        for p in self.pauses:
            drop |= (at >= p.at_us) & (at < (p.until_us if p.until_us is not None else 2**62))
        n = int(drop.sum())
        if not n:
            return batch
        self.paused_packets += n
        keep = ~drop
        run = batch.run
        buf = np.frombuffer(run.data, dtype=np.uint8)
        mask = np.repeat(keep, run.lengths)
        return LegBatch(
            batch.seq,
            batch.leg,
            buf[mask].tobytes(),
            batch.lengths[keep],
            batch.arrival_us[keep],
        )

    def control(self, token: int, ctl: Control) -> Future[Ack] | None:
        """An Ingest Pause or Resume, in seq order with the batches (a resend is
        skipped, a gap refused); returns as ``process``."""
        with self.lock:
            if not self._admit(token, ctl.seq, "pause" if ctl.pause else "resume"):
                return self.last_future  # a resend: already processed
            if ctl.at_us < 0:
                raise InputError(f"{'pause' if ctl.pause else 'resume'} at_us is negative")
            at = ctl.at_us or self.last_arrival_us or self.start_us
            paused = bool(self.pauses) and self.pauses[-1].until_us is None
            if ctl.pause:
                if paused:
                    raise InputError(f"call {self.spec.call_id} is paused already")
                self.pauses.append(Pause(at))
            else:
                if not paused:
                    raise InputError(f"call {self.spec.call_id} is not paused: nothing to resume")
                p = self.pauses[-1]
                p.until_us = max(at, p.at_us)
            self._place_pauses()
            self.next_seq += 1
            return self.last_future

    def _frame_at(self, at_us: int, up: bool) -> int:
        """The frame boundary at or before (``up``: at or after) an instant."""
        d = at_us - self.start_us
        return max(0, -(-d // FRAME_US) if up else d // FRAME_US)

    def _place_pauses(self, end_frame: int | None = None) -> None:
        """Give each pause its frame span once the timeline's origin is known, never
        before a frame some leg has processed already, and hand the spans to the legs'
        pipelines. ``end_frame``: the call ends here (an open pause ends with it)."""
        if self.pipes is None or not self.pauses:
            return
        done = max(p.next_index for p in self.pipes)
        for p in self.pauses:
            if p.start is None:
                p.start = max(self._frame_at(p.at_us, False), done)
            if p.end is None and p.until_us is not None:
                p.end = max(self._frame_at(p.until_us, True), p.start, done)
            if p.end is None and end_frame is not None:
                p.end = max(end_frame, p.start)
        for pipe in self.pipes:
            pipe.set_paused([(p.start, p.end) for p in self.pauses if p.start is not None])

    def paused_spans(self) -> list[dict[str, int]]:
        """The sealed summary's "paused": closed spans of at least one frame."""
        return [
            {"start_frame": p.start, "frames": p.end - p.start}
            for p in self.pauses
            if p.start is not None and p.end is not None and p.end > p.start
        ]

    def _check_codec(self, leg: int) -> None:
        """Audio in a codec callvault does not record is loud: a WARNING, once per call."""
        assert self.pipes is not None
        pipe = self.pipes[leg]
        n = pipe.jb.stat("unsupported_payload_type")
        if n != self.unsupported[leg] and not any(self.unsupported):
            pts = ", ".join(map(str, pipe.jb.unsupported_payload_types)) or "?"
            log.warning(
                "call %s/%s leg %s: RTP in an unsupported codec (payload type %s) is recorded "
                "as unsupported_codec frames, not audio; callvault records %s",
                self.tenant,
                self.spec.call_id,
                pipe.result.name,
                pts,
                RECORDED_CODECS,
            )
        self.unsupported[leg] = n

    def _begin(self, start_us: int) -> None:
        """The first batch (or an end with none): the timeline's origin is known, the
        call is opened in the vault (unless resumed) and the legs' pipelines made."""
        self.start_us = start_us
        if self.writer is None:
            check_writer(self.vault)
            self.writer = self._open_call()
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
        self._place_pauses()

    def _open_call(self) -> CallWriter:
        """The call opened in the vault; WriterFailed (nothing opened: the id stays
        free) when the OPEN record could not be stored."""
        m = self.spec.meta
        try:
            return self.vault.open_call(
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
                recording_id=self.spec.recording_id,
                decision=self.decision.doc() if self.decision is not None else None,
            )
        except (InputError, TenantErased):  # the tenant was erased meanwhile: for good
            raise
        except CallvaultError as e:
            raise WriterFailed(
                f"call {self.spec.call_id} could not be opened ({e}); nothing of it was "
                "stored: retry once the server is SERVING again"
            ) from e

    def _take(self, leg: int, final: bool = False) -> None:
        """Store the leg's new Opus packets in records cut at multiples of
        FRAMES_PER_RECORD frames (packet i of the leg is frame i); with ``final``,
        the rest too. Packets short of a record stay in the pipeline."""
        assert self.pipes is not None
        pipe = self.pipes[leg]
        while ready := pipe.packets_ready:
            f = self.encoded[leg]  # the frame of the next packet
            if f < self.skip[leg]:
                # frames durable before a restart are recomputed, not stored twice
                n = min(ready, self.skip[leg] - f)
                pipe.take_packets(n)
                self.encoded[leg] += n
                continue
            n = FRAMES_PER_RECORD - f % FRAMES_PER_RECORD
            if ready < n:
                if not final:
                    return
                n = ready
            part = pipe.take_packets(n)
            self.encoded[leg] += n
            self._flush(leg, f, part)

    def _flush(self, leg: int, first: int, part: PacketRun) -> None:
        """Append one record: the leg's packets of frames first.. ."""
        assert self.writer is not None
        try:
            assert self.pipes is not None
            fut = self.writer.append(
                leg, first, part.lengths, part.data, self.pipes[leg].store_codec_byte
            )
        except InputError:
            raise
        except CallvaultError as e:  # broken by reopen_writer, or the writer closed
            raise self._interrupt(str(e)) from e
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
            if self.expired is not None:
                raise CallExpired(self.expired)
            if batches != self.next_seq:
                raise InputError(
                    f"CallEnd says {batches} batches were sent but the server has "
                    f"processed {self.next_seq}: send the missing ones first"
                )
            self._check_writable()
            if self.pipes is None:  # a call with no RTP at all: an empty recording
                self._begin(self.start_us or end_us or time.time_ns() // 1000)
            assert self.pipes is not None and self.writer is not None
            total = max(p.drain(end_us or None) for p in self.pipes)
            self._place_pauses(end_frame=total)
            summaries = []
            for leg, p in enumerate(self.pipes):
                p.finish(total_frames=total)
                self._take(leg, final=True)
                summaries.append(p.result.summary())
            self.unsupported_frames = sum(s["unsupported_codec"]["frames"] for s in summaries)
            writer = self.writer
        summary: dict[str, Any] = {"legs": summaries}
        if self.pauses:
            summary["paused"] = self.paused_spans()
        if self.spec.recording_id:
            summary["recording_id"] = self.spec.recording_id
        try:
            seal = writer.seal(
                summary=summary, frames=total, end_us=self.start_us + frames_us(total)
            )
        except InputError:
            raise
        except CallvaultError as e:  # a record or the seal was not stored
            raise self._interrupt(str(e)) from e
        entry = self.vault.get_call(self.spec.call_id, tenant=self.tenant)
        with self.changed:
            self.durable = [total + 1] * len(self.durable)  # + the encoder flush packet
            self.sealed = (seal, total, entry.log_index)
            self.changed.notify_all()
            return self.sealed

    def flush_partial(self) -> None:
        """Shutdown: store every frame encoded so far (records shorter than
        FRAMES_PER_RECORD frames); what the jitter buffer still holds is replayed
        when the client resends."""
        with self.lock:
            if self.pipes is None or self.sealed is not None or self.interrupted():
                return
            for leg in range(len(self.pipes)):
                self._take(leg, final=True)
            fut = self.last_future
        if fut is not None:
            fut.result()


class Ingestor:
    """The live calls of one server."""

    def process(
        self, live: LiveCall, token: int, batch: LegBatch, *, inline: bool = False
    ) -> Future[Ack] | None:
        """LiveCall.process on a worker thread (see __init__: a Record stream), or on
        the calling thread (``inline``: a RecordCalls stream, whose thread serves many
        calls); waits for it."""
        before = sum(live.unsupported)
        if inline:
            fut = live.process(token, batch)
        else:
            fut = self.workers.submit(live.process, token, batch).result()
        after = sum(live.unsupported)
        if after != before:  # Admin.Stats: StatsReply 13-14
            with self.lock:
                self.unsupported_codec["calls"] += before == 0
                self.unsupported_codec["packets"] += after - before
        return fut

    def __init__(
        self,
        vault: Vault,
        settings: Settings | None = None,
        *,
        workers: int = 0,
        limits: Limits | None = None,
        policy: RecordingPolicy | None = None,
    ) -> None:
        self.vault = vault
        # what gets recorded (lifecycle.rules; docs/access.md "Recording rules")
        self.policy = policy or RECORD_ALL
        self.not_recorded_total = 0  # CallStarts answered "not recorded" (decisions)
        # the product's live defaults: DTMF masked, digits not kept ([dtmf] policy)
        self.settings = settings or Settings(**dtmf_settings(None))
        if self.settings.keep_digits:
            log.info("DTMF digits are kept in the calls' summaries ([dtmf] keep_digits)")
        self.limits = limits or Limits()
        self.expired_total = 0  # calls expired unfed (reap)
        # why a new call is refused now (the capacity floor: lifecycle.capacity's
        # admit, reading a state its thread keeps), None: admitted; None: no check
        self.admit_new: Callable[[], str | None] | None = None
        self.resume_sealed_total = 0  # calls sealed by reap after resume_s without a stream
        # Batches are processed (jitter buffer, DSP, Opus) on a few worker threads, not
        # on the RPC threads: with a thread per stream, dozens of threads taking turns
        # at the GIL around every libopus call made each batch wait for the GIL far
        # longer than it computed (a GIL convoy); a few workers keep the cores busy
        # and the hand-offs rare. Each stream waits for its own batch, so a call's
        # batches stay in order.
        self.workers = ThreadPoolExecutor(
            workers or (os.cpu_count() or 2) + 1, thread_name_prefix="ingest"
        )
        # RecordCalls: a message's calls whose items wait for the vault's committer
        # (a first batch, a seal) run here, each on a thread, so the waits overlap
        self.waiters = ThreadPoolExecutor(WAITERS, thread_name_prefix="ingest-wait")
        self.lock = threading.Lock()
        self.calls: dict[tuple[str, str], LiveCall] = {}
        self._tokens = 0
        self.packets_total = 0
        self.batches_total = 0
        self.bytes_total = 0
        self._rate: list[tuple[float, int, int]] = []  # (time, packets, bytes) samples
        # audio in codecs callvault does not record, since the server started (StatsReply 13-15)
        self.unsupported_codec = {"calls": 0, "packets": 0, "frames": 0}
        self.accepting = True
        # ingest_codec auto (docs/server.md): calls encoded to Opus at once beyond
        # which a new call is stored as G.711 (0: off)
        self.auto_opus_calls = 0
        self.mux: set[Any] = set()  # open RecordCalls streams (MuxStream)

    def _call_settings(self, writer: CallWriter | None) -> Settings:
        """A starting call's settings: peak mode (docs/server.md "Settings",
        ingest_codec): a resumed call goes on storing what it stored; with
        ``auto_opus_calls`` (ingest_codec auto) a new call is stored as G.711 while
        that many calls are being encoded to Opus already. Under ``self.lock``."""
        s = self.settings
        if writer is not None:
            codec = "g711" if writer.raw else "opus"
            return s if codec == s.store_codec else dataclasses.replace(s, store_codec=codec)
        if self.auto_opus_calls and s.store_codec == "opus":
            opus = sum(1 for c in self.calls.values() if c.settings.store_codec == "opus")
            if opus >= self.auto_opus_calls:
                return dataclasses.replace(s, store_codec="g711")
        return s

    def mux_opened(self, stream: Any) -> None:
        with self.lock:
            self.mux.add(stream)

    def mux_closed(self, stream: Any) -> None:
        with self.lock:
            self.mux.discard(stream)

    def mux_counts(self) -> tuple[int, int]:
        """(RecordCalls streams open, calls bound to them): StatsReply 19-20."""
        with self.lock:
            streams = list(self.mux)
        return len(streams), sum(s.calls() for s in streams)

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
            if live is not None and live.interrupted() is not None:
                # storing it failed (the segment writer failed): continued from what
                # the vault stored, as after a restart, once the writer works again
                if live.spec.recording_id != spec.recording_id:
                    self._same_recording(spec, live.spec.recording_id, "being recorded")
                check_writer(self.vault)
                self._drop_interrupted(live)
                live = None
            if live is None:
                self.vault.check_tenant(tenant)  # an erased tenant takes no new calls
                if len(self.calls) >= self.limits.max_open_calls:
                    raise TooManyCalls(
                        f"the server records {len(self.calls)} calls already "
                        f"(max_open_calls): retry when one has ended"
                    )
                entry = self.vault.index.get_call(tenant, spec.call_id)
                writer = None
                decision = None
                if entry is None and self.admit_new is not None:
                    full = self.admit_new()  # a new call; those being recorded go on
                    if full is not None:
                        raise VolumeFull(full)
                if entry is None:
                    decision = self._decide_new(spec, tenant)
                    if not decision[0].recorded:  # never live: answered as sealed
                        live = LiveCall(self.vault, spec, self.settings)
                        live.decision = decision[0]
                        log_index = decision[1]
                        live.sealed = (b"", 0, log_index)
                        live.owner = token
                        return live, token
                if entry is not None:
                    if list(entry.legs) != list(spec.legs):
                        raise InputError(
                            f"call {spec.call_id} exists with legs "
                            f"{', '.join(entry.legs)}, not {', '.join(spec.legs)}"
                        )
                    if entry.state != "open":
                        self._same_recording(spec, self._sealed_recording_id(entry), entry.state)
                        live = LiveCall(self.vault, spec, self.settings)
                        live.decision = (
                            Decision.from_doc(entry.decision) if entry.decision else None
                        )
                        frames = (entry.end_us - entry.start_us) // FRAME_US
                        live.sealed = (
                            bytes.fromhex(entry.seal) if entry.seal else b"",
                            frames,
                            entry.log_index,
                        )
                        live.owner = token
                        return live, token
                    if entry.recording_id is not None:  # kept since it was opened
                        self._same_recording(spec, entry.recording_id, "open")
                    check_writer(self.vault)
                    writer = self.vault.resume_call(spec.call_id, tenant=tenant)
                else:
                    check_writer(self.vault)
                live = LiveCall(self.vault, spec, self._call_settings(writer), writer=writer)
                if decision is not None:
                    # kept with the call when the server has a policy
                    live.decision = decision[0] if self.policy.configured else None
                elif entry is not None and entry.decision:
                    live.decision = Decision.from_doc(entry.decision)
                self.calls[key] = live
            elif live.spec.recording_id != spec.recording_id:
                self._same_recording(spec, live.spec.recording_id, "being recorded")
            elif list(live.spec.legs) != list(spec.legs):
                raise InputError(
                    f"call {spec.call_id} is being recorded with legs "
                    f"{', '.join(live.spec.legs)}, not {', '.join(spec.legs)}"
                )
        with live.lock:
            if live.expired is not None:  # reaped in between: a new call
                return self.attach(spec)
            live.owner = token
            live.attachments += 1
            live.attached = True
            live.touched = time.monotonic()
        return live, token

    def _decide_new(self, spec: CallSpec, tenant: str) -> tuple[Decision, int]:
        """The recording policy on a call this server has not got (neither live nor
        in the index): (decision, its DECISION leaf or -1). A call decided not
        recorded before keeps that decision (its DECISION entry); one decided now is
        stored as a DECISION entry before this returns. InputError: an unknown region."""
        stored = self.vault.index.get_decision(tenant, spec.call_id)
        if stored is not None:
            return Decision.from_doc(stored.doc), stored.log_index
        decision = self.policy.decide(spec.facts())
        if decision.recorded:
            return decision, -1
        check_writer(self.vault)
        try:
            d = self.vault.record_decision(spec.call_id, decision.doc(), tenant=tenant)
        except InputError:
            raise
        except CallvaultError as e:
            raise WriterFailed(
                f"call {spec.call_id} is not to be recorded but its decision could not be "
                f"stored ({e}): retry once the server is SERVING again"
            ) from e
        self.not_recorded_total += 1
        log.info(
            "call %s/%s: not recorded (%s: %s)",
            tenant,
            spec.call_id,
            d.doc.get("rule"),
            d.doc.get("reason"),
        )
        return Decision.from_doc(d.doc), d.log_index

    def decide(self, spec: CallSpec) -> tuple[Decision, int, int]:
        """Ingest.Decide: what a CallStart of ``spec`` would be answered, before any of
        its audio exists: (decision, its DECISION leaf or -1, the decision's time or 0).
        A call not recorded gets its DECISION entry stored now; a call that exists is
        recorded (with the decision it was opened with, when it has one)."""
        spec.check()
        tenant = spec.tenant or "default"
        with self.lock:
            live = self.calls.get((tenant, spec.call_id))
            if live is not None:
                return live.decision or _recorded_before(), -1, 0
            entry = self.vault.index.get_call(tenant, spec.call_id)
            if entry is not None:
                d = Decision.from_doc(entry.decision) if entry.decision else _recorded_before()
                return d, -1, 0
            decision, leaf = self._decide_new(spec, tenant)
            stored = self.vault.index.get_decision(tenant, spec.call_id)
            return decision, leaf, stored.time_us if stored is not None else 0

    def _drop_interrupted(self, live: LiveCall) -> None:
        """Forget a call whose storing failed (under ``self.lock``); its CallWriter,
        unless ``Vault.reopen_writer`` dropped it already, is released so that
        ``resume_call`` can take the call up from its stored records."""
        log.info(
            "call %s/%s: resumed from what was stored (storing it failed: %s)",
            live.tenant,
            live.spec.call_id,
            live.interrupted(),
        )
        w = live.writer
        if w is not None and w.broken is None:
            w.release()
        self.unsupported_codec["frames"] += live.unsupported_frames
        del self.calls[(live.tenant, live.spec.call_id)]

    def _sealed_recording_id(self, entry: Any) -> str:
        """The recording_id a sealed call was recorded with ("" for none, or when the
        call is erased: its summary can no longer be read)."""
        if entry.state != "sealed":
            return ""
        rid = self.vault.summary(entry.call_id, tenant=entry.tenant).get("recording_id", "")
        return rid if isinstance(rid, str) else ""

    @staticmethod
    def _same_recording(spec: CallSpec, recorded: str, state: str) -> None:
        """RecordingConflict unless ``spec`` comes from the recording that made the call
        (equal recording_id, "" for both included): a call id names one recording."""
        if spec.recording_id == recorded:
            return
        raise RecordingConflict(
            f"call {spec.call_id} already exists ({state}) and was recorded by another "
            "recording (its recording_id differs): a call id names one recording; "
            "record this one under a new call id"
        )

    def detach(self, live: LiveCall, token: int) -> None:
        """The stream ``token`` ended (closed, left, idle or failed): if it still owned
        the call, the call waits for a reconnect from now on (``reap``)."""
        with live.lock:
            if live.owner == token and live.attached:
                live.attached = False
                live.touched = time.monotonic()

    def reap(self, now: float | None = None) -> list[tuple[LiveCall, str]]:
        """Apply the time bounds (``Limits``) once: a call that got no batch within
        ``call_idle_s`` of its CallStart is forgotten (nothing of it was stored); a
        call with audio whose stream has been gone ``resume_s`` is sealed with what
        was processed; one resumed from the vault but not yet replayed is left open
        in the vault (a later CallStart resumes it). Returns (call, what was done)."""
        now = time.monotonic() if now is None else now
        lim = self.limits
        with self.lock:
            calls = list(self.calls.values())
        done: list[tuple[LiveCall, str]] = []
        for live in calls:
            if not live.lock.acquire(blocking=False):
                continue  # busy with a batch: not idle
            try:
                if live.sealed is not None or live.expired is not None:
                    continue
                cid = live.spec.call_id
                if live.writer is None and live.pipes is None:  # never fed: nothing stored
                    if now - live.touched < lim.call_idle_s:
                        continue
                    live.expired = (
                        f"call {cid}: no audio within {lim.call_idle_s:g} s of its CallStart: "
                        "expired, nothing was stored (send a CallStart again to record it)"
                    )
                    self.expired_total += 1
                    what = "expired"
                elif live.attached or now - live.touched < lim.resume_s:
                    continue
                elif live.interrupted() is not None:  # storing it failed: nothing to seal
                    if live.writer is not None and live.writer.broken is None:
                        live.writer.release()
                    live.expired = (
                        f"call {cid}: storing it failed and no stream came back for "
                        f"{lim.resume_s:g} s: left open in the vault with what was stored "
                        "(a CallStart resumes it)"
                    )
                    what = "released"
                elif live.pipes is None:  # resumed from the vault, never replayed
                    assert live.writer is not None
                    live.writer.release()  # open in the vault as after a restart
                    live.expired = (
                        f"call {cid}: no stream for {lim.resume_s:g} s: left open in the "
                        "vault (a CallStart resumes it)"
                    )
                    what = "released"
                else:
                    try:
                        live.end(live.owner, live.next_seq)
                    except Exception as e:  # keep reaping the others; the call stays
                        done.append((live, f"not sealed: {e}"))
                        continue
                    self.resume_sealed_total += 1
                    what = "sealed"
                self.finished(live)  # under live.lock: attach sees it gone or expired
            finally:
                live.lock.release()
            done.append((live, what))
        return done

    def count(self, packets: int, nbytes: int, batches: int = 1) -> None:
        now = time.monotonic()
        with self.lock:
            self.packets_total += packets
            self.batches_total += batches
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
            self.unsupported_codec["frames"] += live.unsupported_frames  # StatsReply 15
            live.unsupported_frames = 0
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


def _recorded_before() -> Decision:
    return Decision(True, "", "the call exists (recorded before decisions were kept)")


class ShuttingDown(VaultError):
    pass


# -- one Record stream ---------------------------------------------------------------------
T = TypeVar("T")
POLL_S = 1.0  # how often a quiet stream checks its idle limit and ``active()``


class StreamIdle(CallvaultError):
    """A Record stream said nothing for its idle limit: closed; the call stays open."""


class StoreFailed(CallvaultError):
    """Storing the call's records failed (the vault reported an error). Ingest now
    raises CallInterrupted (UNAVAILABLE: the call resumes) for this; kept for the
    status table."""


@dataclass(frozen=True)
class Batch:
    """What an RtpBatch says, as received: checked against the call by RecordStream."""

    seq: int
    leg: int
    packets: bytes
    lengths: Sequence[int]
    arrival_us: Sequence[int]


@dataclass(frozen=True)
class End:
    """What a CallEnd says: how many batches were sent, and when the call ended."""

    batches: int
    end_us: int = 0


@dataclass(frozen=True)
class Leave:
    """RecordCalls: the client lets the slot's call go (it stays open, detached)."""


@dataclass(frozen=True)
class Unknown:
    """A request that holds none of CallStart, batch and CallEnd."""


Request = CallSpec | Batch | Control | End | Leave | Unknown


@dataclass(frozen=True)
class Started:
    """The answer to a CallStart: where to resend from."""

    resume_from_seq: int
    resumed: bool  # the call existed already (reconnect, restart or sealed)
    start_us: int  # frame 0's instant, 0 until the first batch
    sealed_before: bool = False  # the call was sealed already: Sealed follows
    # the recording policy's decision; not recorded: Sealed follows (no seal)
    decision: Decision | None = None


@dataclass(frozen=True)
class Sealed:
    """The call is sealed: its seal, frames per leg and the seal's log index."""

    seal: bytes
    frames: int
    log_index: int


Reply = Started | Progress | Sealed


class CallSession:
    """One call on one stream: the per-call state machine that Record (one session per
    stream, ``RecordStream``) and RecordCalls (a session per slot, ``MuxStream``) share.

    * A CallStart attaches the session to its call (a live call is taken over, an open
      one resumed by replay, a sealed one answered with Started and Sealed at once,
      which ends the session).
    * Batches go to the call in seq order (a resend is skipped, a gap refused). Batch
      S is acknowledged once it is processed and every record it completed is durable:
      ``ack_to`` is the highest such seq; a batch whose records are still being written
      is acknowledged when their future resolves, through ``on_durable(session, seq)``
      (called on the vault's committer thread: it only hands the seq to the stream's
      thread, which calls ``acknowledged``). ``ack`` gives one Ack for every batch
      acknowledged since the last one.
    * An End drains the legs and seals: the last Ack, Sealed; the session is done.

    ``inline``: batches run on the calling thread (RecordCalls: its stream's thread or
    the chunk of the message it is given) rather than handed to the Ingestor's worker
    threads one by one (Record)."""

    def __init__(
        self,
        ingestor: Ingestor,
        on_durable: Callable[[CallSession, int], None],
        *,
        inline: bool = False,
    ) -> None:
        self.ingestor = ingestor
        self.on_durable = on_durable
        self.inline = inline
        self.live: LiveCall | None = None
        self.token = 0  # this session's token on the call (a later stream takes over)
        self.done = False  # sealed, or its stream left
        self.ack_to = -1  # the highest seq acknowledged so far
        self.acked = -1  # the highest seq an Ack was given for
        self.packets = 0  # RTP packets and bytes of the batches processed (stats)
        self.nbytes = 0
        self.batches = 0

    def handle(self, req: Request) -> list[Reply]:
        """Take one request; the replies due at once (a batch's Ack comes by ``ack``)."""
        if self.done:
            raise InputError("the call's stream is over")
        if isinstance(req, CallSpec):
            if self.live is not None:
                raise InputError("a second CallStart for one call on one stream")
            call, self.token = self.ingestor.attach(req)
            self.live = call
            out: list[Reply] = [
                Started(
                    resume_from_seq=call.next_seq,
                    resumed=call.resumed or call.attachments > 1 or call.sealed is not None,
                    start_us=call.start_us,
                    sealed_before=call.sealed is not None
                    and (call.decision is None or call.decision.recorded),
                    decision=call.decision,
                )
            ]
            if call.sealed is not None:
                out.append(Sealed(*call.sealed))
                self.done = True
            return out
        live = self.live
        if live is None:
            raise InputError("a call's first message must be a CallStart")
        if isinstance(req, Batch):
            batch = LegBatch.checked(
                req.seq, req.leg, req.packets, req.lengths, req.arrival_us, len(live.spec.legs)
            )
            fut = self.ingestor.process(live, self.token, batch, inline=self.inline)
            self.packets += len(batch.lengths)
            self.nbytes += len(batch.packets)
            self.batches += 1
            if fut is None or fut.done():
                self.ack_to = max(self.ack_to, batch.seq)
            else:
                fut.add_done_callback(self._ack_when_done(batch.seq))
            return []
        if isinstance(req, Control):
            fut = live.control(self.token, req)
            if fut is None or fut.done():
                self.ack_to = max(self.ack_to, req.seq)
            else:
                fut.add_done_callback(self._ack_when_done(req.seq))
            return []
        if isinstance(req, End):
            sealed = live.end(self.token, req.batches, req.end_us)
            out = []
            if live.next_seq:
                out.append(live.progress(live.next_seq - 1))
            out.append(Sealed(*sealed))
            self.ingestor.finished(live)
            self.done = True
            return out
        raise InputError("an Ingest message must hold start, batch, pause, resume or end")

    def _ack_when_done(self, seq: int) -> Callable[[Any], None]:
        def done(_fut: Any) -> None:
            self.on_durable(self, seq)

        return done

    def take_counts(self) -> tuple[int, int, int]:
        """(packets, bytes, batches) processed since the last call (Ingestor.count)."""
        got = (self.packets, self.nbytes, self.batches)
        self.packets = self.nbytes = self.batches = 0
        return got

    def acknowledged(self, seq: int) -> None:
        """Batch ``seq``'s records became durable (``on_durable`` handed it over)."""
        self.ack_to = max(self.ack_to, seq)

    def ack(self) -> Progress | None:
        """The Ack due (for every batch acknowledged since the last Ack), or None;
        CallInterrupted (UNAVAILABLE) when the vault failed to store the call."""
        if self.ack_to <= self.acked or self.done:
            return None
        assert self.live is not None
        if self.live.error is not None:  # the segment writer failed: resume the call
            raise self.live._interrupt(str(self.live.error))
        self.acked = self.ack_to
        return self.live.progress(self.ack_to)

    def check_quiet(self) -> None:
        """Raise what a call that gets no message learns only by looking: it expired
        (CallExpired) or storing it failed (CallInterrupted)."""
        live = self.live
        if live is None or self.done:
            return
        if live.expired is not None:
            raise CallExpired(live.expired)
        if (why := live.interrupted()) is not None:
            raise live._interrupt(why)  # a quiet call's writer broke

    def closed(self) -> list[Reply]:
        """The stream ends (the client half-closed or left): the call stays open (a
        CallStart on a new stream resumes it); the last Ack due, if any."""
        self.done = True
        if self.live is not None and self.ack_to > self.acked:
            self.acked = self.ack_to
            return [self.live.progress(self.ack_to)]
        return []

    def detach(self) -> None:
        """The stream let the call go (ended, failed, or the call failed on it)."""
        self.done = True
        if self.live is not None:
            self.ingestor.detach(self.live, self.token)


class RecordStream:
    """One Record stream (docs/server.md, "Recording"): one ``CallSession``, requests
    read on a thread of their own. ``handle`` takes one request and gives the replies
    due at once; ``ack`` gives the coalesced Ack; ``run`` drives the whole stream from
    an iterator of requests.

    * The first request is a CallStart; batches follow in seq order; an End seals
      (the last Ack, Sealed, and the stream ends). See ``CallSession``.
    * The client half-closing or leaving ends the stream; the call stays open.
    """

    def __init__(self, ingestor: Ingestor, *, idle_s: float = 120.0) -> None:
        self.ingestor = ingestor
        self.idle_s = idle_s
        self.session = CallSession(ingestor, self._durable)
        # requests, the end of them, and batches that became durable ("ack", seq)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    @property
    def live(self) -> LiveCall | None:
        return self.session.live

    @property
    def token(self) -> int:
        return self.session.token

    @property
    def done(self) -> bool:
        return self.session.done

    def _durable(self, _session: CallSession, seq: int) -> None:
        self.events.put(("ack", seq))

    def handle(self, req: Request) -> list[Reply]:
        """Take one request; the replies due at once (a batch's Ack comes by ``ack``)."""
        if self.session.done:
            raise InputError("the Record stream is over")
        if self.session.live is None and not isinstance(req, CallSpec):
            raise InputError("the first message of a Record stream must be a CallStart")
        if isinstance(req, CallSpec) and self.session.live is not None:
            raise InputError("a second CallStart on one stream")
        if isinstance(req, Unknown):
            raise InputError("an IngestRequest must hold start, batch or end")
        out = self.session.handle(req)
        if isinstance(req, Batch):
            self.ingestor.count(*self.session.take_counts())
        return out

    def acknowledged(self, seq: int) -> None:
        """Batch ``seq``'s records became durable (its future's ("ack", seq) event)."""
        self.session.acknowledged(seq)

    def ack(self) -> Progress | None:
        """The Ack due (for every batch acknowledged since the last Ack), or None;
        CallInterrupted (UNAVAILABLE) when the vault failed to store the call."""
        return self.session.ack()

    def closed(self) -> list[Reply]:
        """The client half-closed or left: the stream ends, the call stays open (a
        CallStart on a new stream resumes it); the last Ack due, if any."""
        return self.session.closed()

    def run(
        self,
        requests: Iterable[T],
        decode: Callable[[T], Request],
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[Reply]:
        """The whole stream: ``requests`` are read on a thread of their own (``decode``
        turns each into a Request when its turn comes), and the replies yielded, until
        the stream ends or ``active()`` turns false. StreamIdle when no request came
        for ``idle_s`` seconds."""
        read_requests(requests, self.events)
        try:
            yield from self._loop(decode, active)
        finally:
            if self.live is not None:
                self.ingestor.detach(self.live, self.token)

    def _loop(
        self, decode: Callable[[Any], Request], active: Callable[[], bool]
    ) -> Iterator[Reply]:
        last_req = time.monotonic()
        while active():
            try:
                got = [self.events.get(timeout=POLL_S)]
            except queue.Empty:
                self.session.check_quiet()
                if time.monotonic() - last_req > self.idle_s:
                    raise StreamIdle(
                        f"no message for {self.idle_s:g} s: stream closed "
                        "(reconnect with the same CallStart to resume)"
                    ) from None
                continue
            # Everything already queued is handled together and answered with ONE Ack:
            # each reply costs a blocking send through grpcio's single event thread,
            # so under load the acks coalesce instead of queueing up.
            drain(self.events, got)
            for kind, item in got:
                if kind == "ack":
                    self.acknowledged(item)
                    continue
                if kind != "req":  # the client half-closed or left; the call stays open
                    yield from self.closed()
                    return
                last_req = time.monotonic()
                yield from self.handle(decode(item))
                if self.done:
                    return
            a = self.ack()
            if a is not None:
                yield a


def read_requests(requests: Iterable[Any], events: queue.Queue[tuple[str, Any]]) -> None:
    """Read a stream's requests on a thread of their own into ``events``: ("req", r)
    each, then ("eof", None) or ("gone", error) when the client left."""

    def read() -> None:
        try:
            for req in requests:
                events.put(("req", req))
            events.put(("eof", None))
        except Exception as e:  # the client went away
            events.put(("gone", e))

    threading.Thread(target=read, name="ingest-reader", daemon=True).start()


def drain(events: queue.Queue[tuple[str, Any]], got: list[tuple[str, Any]]) -> None:
    """Append to ``got`` every event already queued."""
    while True:
        try:
            got.append(events.get_nowait())
        except queue.Empty:
            return


# -- one RecordCalls stream: many calls ----------------------------------------------------
RECENT_SLOTS = 4096  # ended slots remembered per stream (their late items are ignored)


@dataclass(frozen=True)
class MuxItem:
    """One item of an IngestMux message: a request for the call bound to ``slot``."""

    slot: int
    req: Request


@dataclass(frozen=True)
class CallFailed:
    """The slot's call failed on this stream (``error``: what Record would have ended
    its stream with); the slot ends, the call stays open on the server."""

    error: BaseException


MuxEvent = tuple[int, Reply | CallFailed]


class MuxStream:
    """One RecordCalls stream (docs/server.md, "Recording"): a ``CallSession`` per
    slot. ``handle`` takes one message's items and gives the events due: each slot's
    Started / Sealed / CallFailed, then one coalesced Ack per call that progressed;
    ``run`` drives the whole stream.

    A message is processed on the stream's own thread with no hand-off per batch:
    its items are grouped per slot (each slot's items in order), and when it holds
    several calls and ``pool`` is given, the groups are split into ``chunks`` chunks
    run at once (one on this thread, the others on the pool), so batches whose C
    work releases the GIL use several cores. A call's error fails that slot only."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        idle_s: float = 120.0,
        pool: ThreadPoolExecutor | None = None,
        chunks: int = 1,
    ) -> None:
        self.ingestor = ingestor
        self.idle_s = idle_s
        self.pool = pool
        self.chunks = max(1, chunks)
        self.sessions: dict[int, CallSession] = {}
        self.ended: OrderedDict[int, None] = OrderedDict()  # recently ended slots
        self.slot_of: dict[int, int] = {}  # id(session) -> slot
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.done = False

    # -- one message -----------------------------------------------------------------
    def handle(self, items: Sequence[MuxItem]) -> list[MuxEvent]:
        """Process one message's items; the events due (Acks of records still being
        written come later, by ``acks``)."""
        groups: dict[int, list[Request]] = {}
        for item in items:
            groups.setdefault(item.slot, []).append(item.req)
        work: list[tuple[int, list[Request]]] = []
        waits = []
        for slot, reqs in groups.items():
            if self._waits(slot, reqs):  # on a thread of its own: the waits overlap
                waits.append(self.ingestor.waiters.submit(self._run_groups, [(slot, reqs)]))
            else:
                work.append((slot, reqs))
        out: list[MuxEvent] = []
        if self.pool is not None and self.chunks > 1 and len(work) > 1:
            n = min(self.chunks, len(work))
            parts = [work[i::n] for i in range(n)]
            futs = [self.pool.submit(self._run_groups, part) for part in parts[1:]]
            results = [self._run_groups(parts[0])] + [f.result() for f in futs]
        else:
            results = [self._run_groups(work)]
        results.extend(f.result() for f in waits)
        for res in results:
            for slot, session, events in res:
                out.extend(events)
                self._settle(slot, session, events)
        packets = nbytes = batches = 0
        for session in self.sessions.values():
            p, b, n = session.take_counts()
            packets, nbytes, batches = packets + p, nbytes + b, batches + n
        if batches:
            self.ingestor.count(packets, nbytes, batches)
        out.extend(self.acks())
        return out

    def _waits(self, slot: int, reqs: list[Request]) -> bool:
        """Whether a slot's items wait for the vault's committer: a CallStart (a resumed
        call is read from the vault), a call's first batch (its OPEN record is made
        durable) or an End (the seal is). Such groups run on ``Ingestor.waiters``, each
        on a thread, so that the calls of one message wait for ONE group commit, not
        one after the other."""
        session = self.sessions.get(slot)
        if session is None or session.live is None or session.live.writer is None:
            return True
        return any(isinstance(r, (End, CallSpec)) for r in reqs)

    def _run_groups(
        self, work: list[tuple[int, list[Request]]]
    ) -> list[tuple[int, CallSession | None, list[MuxEvent]]]:
        return [(slot, *self._run_slot(slot, reqs)) for slot, reqs in work]

    def _run_slot(
        self, slot: int, reqs: list[Request]
    ) -> tuple[CallSession | None, list[MuxEvent]]:
        """One slot's items of a message, in order (any thread: touches only this
        slot's session; ``_settle`` files the result on the stream's thread)."""
        session = self.sessions.get(slot)
        events: list[MuxEvent] = []
        # late items of a call that ended on this stream: ignored, unless a new call
        # is started on the slot (refused: slots are not reused)
        if (
            session is None
            and slot in self.ended
            and not any(isinstance(r, CallSpec) for r in reqs)
        ):
            return None, events
        try:
            for req in reqs:
                if isinstance(req, Unknown):
                    raise InputError("an IngestMuxItem must hold start, batch or end")
                if session is None:
                    if slot in self.ended:
                        raise InputError(
                            f"slot {slot} was used by a call that ended on this stream: "
                            "a CallStart takes a slot never used on the stream"
                        )
                    if not isinstance(req, CallSpec):
                        raise InputError(
                            f"slot {slot} holds no call: its first item must be a CallStart"
                        )
                    session = CallSession(self.ingestor, self._durable, inline=True)
                elif isinstance(req, CallSpec):
                    raise InputError(
                        f"slot {slot} holds a call already: a CallStart takes a new slot"
                    )
                if isinstance(req, Leave):  # the client lets the call go
                    events.extend((slot, r) for r in session.closed())
                    session.detach()
                    break
                events.extend((slot, r) for r in session.handle(req))
                if session.done:
                    break
        except Exception as e:  # this call only: the stream and the other calls go on
            if not isinstance(e, CallvaultError):
                log.exception("slot %d: processing its items failed", slot)
            events.append((slot, CallFailed(e)))
            if session is not None:
                session.detach()
                session.done = True
        return session, events

    def _settle(self, slot: int, session: CallSession | None, events: list[MuxEvent]) -> None:
        """(stream thread) File a slot's outcome: bound, or ended (Sealed or failed)."""
        if session is None:
            if events:  # refused before anything was bound
                self._end_slot(slot)
            return
        if session.done:
            self.sessions.pop(slot, None)
            self.slot_of.pop(id(session), None)
            self._end_slot(slot)
        elif slot not in self.sessions:
            self.sessions[slot] = session
            self.slot_of[id(session)] = slot

    def _end_slot(self, slot: int) -> None:
        self.ended[slot] = None
        while len(self.ended) > RECENT_SLOTS:
            self.ended.popitem(last=False)

    def _durable(self, session: CallSession, seq: int) -> None:
        self.events.put(("ack", (session, seq)))

    def acks(self) -> list[MuxEvent]:
        """One Ack per call with batches acknowledged since its last Ack (a call whose
        storing failed fails instead: CallInterrupted)."""
        out: list[MuxEvent] = []
        for slot, session in list(self.sessions.items()):
            try:
                a = session.ack()
            except CallvaultError as e:
                out.append((slot, CallFailed(e)))
                session.detach()
                self._settle(slot, session, [])
                continue
            if a is not None:
                out.append((slot, a))
        return out

    def check_quiet(self) -> list[MuxEvent]:
        """Calls that expired or whose storing failed while they got no message."""
        out: list[MuxEvent] = []
        for slot, session in list(self.sessions.items()):
            try:
                session.check_quiet()
            except CallvaultError as e:
                out.append((slot, CallFailed(e)))
                session.detach()
                self._settle(slot, session, [])
        return out

    def closed(self) -> list[MuxEvent]:
        """The client half-closed or left: every call stays open; the last Acks due."""
        self.done = True
        out: list[MuxEvent] = []
        for slot, session in self.sessions.items():
            out.extend((slot, r) for r in session.closed())
        return out

    def detach_all(self) -> None:
        for session in self.sessions.values():
            session.detach()

    def calls(self) -> int:
        return len(self.sessions)

    # -- the whole stream ------------------------------------------------------------
    def run(
        self,
        requests: Iterable[T],
        decode: Callable[[T], Sequence[MuxItem]],
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[list[MuxEvent]]:
        """The whole stream: ``requests`` (messages) are read on a thread of their own,
        ``decode`` turns each into its items when its turn comes (what it raises ends
        the stream: a message that cannot be read concerns every call), and each
        message's events are yielded as one list, as are Acks that became due
        meanwhile; until the client half-closes or leaves, or ``active()`` turns
        false. StreamIdle when no message came for ``idle_s`` seconds."""
        read_requests(requests, self.events)
        self.ingestor.mux_opened(self)
        try:
            yield from self._loop(decode, active)
        finally:
            self.detach_all()
            self.ingestor.mux_closed(self)

    def _loop(
        self, decode: Callable[[Any], Sequence[MuxItem]], active: Callable[[], bool]
    ) -> Iterator[list[MuxEvent]]:
        last_req = last_check = time.monotonic()
        while active():
            try:
                got = [self.events.get(timeout=POLL_S)]
            except queue.Empty:
                got = []
            drain(self.events, got)
            out: list[MuxEvent] = []
            for kind, item in got:
                if kind == "ack":
                    session, seq = item
                    session.acknowledged(seq)
                    continue
                if kind != "req":  # the client half-closed or left; the calls stay open
                    out.extend(self.closed())
                    if out:
                        yield out
                    return
                last_req = time.monotonic()
                out.extend(self.handle(decode(item)))
            out.extend(self.acks())
            now = time.monotonic()
            if now - last_check >= POLL_S:
                last_check = now
                out.extend(self.check_quiet())
                if now - last_req > self.idle_s:
                    raise StreamIdle(
                        f"no message for {self.idle_s:g} s: stream closed (its calls stay "
                        "open: reconnect and send each CallStart again to resume them)"
                    )
            if out:
                yield out
