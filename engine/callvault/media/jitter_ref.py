"""Pure-Python twin of ``callvault._rtp``: RTP parse and the per-leg jitter buffer.

Same API and the same outputs bit for bit as the Cython module (checked by
tests/ext/test_jitter_differential.py); it is the readable reference and the
benchmark baseline. The timeline model (anchoring, wrap, window, late and
duplicate rules, settling, drift, bounds, codecs) is described once, in the
docstring of ext/_rtp.pyx; the function names and the order of steps below
follow that file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.rtpdefs import (
    FRAME_AUDIO,
    FRAME_LOST,
    FRAME_SILENCE,
    FRAME_UNSUPPORTED,
    MALFORMED_REASONS,
    PT_CN,
    PT_PCMA,
    PT_PCMU,
    STAT_KEYS,
    UNSUPPORTED_TICKS_PER_BYTE,
    Frames,
    ParsedPackets,
    TelephoneEvent,
    check_batch,
    check_options,
)
from callvault.rtpdefs import event_digit as _event_digit
from callvault.timeline import FRAMES_PER_SECOND, SAMPLE_RATE

__all__ = [
    "FRAME_AUDIO",
    "FRAME_LOST",
    "FRAME_SILENCE",
    "FRAME_UNSUPPORTED",
    "MALFORMED_REASONS",
    "STAT_KEYS",
    "Frames",
    "JitterBuffer",
    "ParsedPackets",
    "TelephoneEvent",
    "parse",
]

_EMPTY = 0  # ring sample state: nothing known
_AUDIO = 1  # ring sample state: decoded audio
_SILENT = 2  # ring sample state: the sender was silent here
_UNSUP = 3  # ring sample state: audio in a codec no decoder handles (the pcm slot holds its PT)

_KIND_AUDIO = 0
_KIND_CN = 1
_KIND_EVENT = 2
_KIND_UNSUPPORTED = 3

_NEW_SSRC = 1  # a packet would start a new stream: a new SSRC ...
_NEW_RESET = 2  # ... or a timestamp jump of the same SSRC (a restart)

RESET_SECONDS = 3  # |arrival - RTP position| beyond this is a reset, not jitter
DRIFT_BLOCK_SECONDS = 2  # the minimum delay is taken over blocks this long (arrival time)
DRIFT_THRESHOLD_DIV = 4  # the mapping moves when the delay is off by more than a frame / 4
DRIFT_WAIT_MS = 500  # after a backward drift step, wait this long for sender silence to absorb it
MAX_MISORDER = 100  # RFC 3550 A.1: a sequence this far behind the highest is not a restart
PROBATION_SEQ = 8  # a held new-stream packet is confirmed by one this close in sequence
SEQ_SLOTS = 1024  # remembered packets per stream (duplicates, neighbours); power of two
CHUNK_FRAMES = 25  # a packet or filler range is written in chunks of this many frames
CONCEAL_GAIN_Q15 = (24576, 16384, 8192, 0)  # gain of the 1st, 2nd, 3rd, 4th+ lost frame
_NO_SEQ = -(1 << 62)  # an extended sequence number no packet can have


def _ulaw(u: int) -> int:
    """ITU-T G.711 mu-law expansion (same as cv_ulaw_decode in ext/g711.h)."""
    u = ~u & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw(a: int) -> int:
    """ITU-T G.711 A-law expansion (same as cv_alaw_decode in ext/g711.h)."""
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t += 0x108
        if seg > 1:
            t <<= seg - 1
    return t if a & 0x80 else -t


_ULAW = np.array([_ulaw(i) for i in range(256)], dtype=np.int16)
_ALAW = np.array([_alaw(i) for i in range(256)], dtype=np.int16)

# The decoders: payload type -> expansion table (one byte, one sample at 8 kHz).
# A payload type that is not here, not comfort noise and not a declared event is
# placed on the timeline as "unsupported codec" (FRAME_UNSUPPORTED).
DECODERS: dict[int, npt.NDArray[np.int16]] = {PT_PCMU: _ULAW, PT_PCMA: _ALAW}


def _fdiv(a: int, b: int) -> int:
    """Floor division (the C twin has the same helper)."""
    return a // b


def _parse_one(buf: bytes, off: int, n: int) -> tuple[int, int, int, int, int, int, int, int]:
    """(reason, marker, pt, seq, ts, ssrc, payload_offset, payload_length) of one packet."""
    if n < 12:
        return 1, 0, 0, 0, 0, 0, 0, 0
    b0 = buf[off]
    b1 = buf[off + 1]
    marker = b1 >> 7
    pt = b1 & 0x7F
    seq = (buf[off + 2] << 8) | buf[off + 3]
    ts = int.from_bytes(buf[off + 4 : off + 8], "big")
    ssrc = int.from_bytes(buf[off + 8 : off + 12], "big")
    if b0 >> 6 != 2:
        return 2, marker, pt, seq, ts, ssrc, 0, 0
    hl = 12 + 4 * (b0 & 0x0F)
    if hl > n:
        return 3, marker, pt, seq, ts, ssrc, 0, 0
    if b0 & 0x10:
        if hl + 4 > n:
            return 4, marker, pt, seq, ts, ssrc, 0, 0
        hl += 4 + 4 * ((buf[off + hl + 2] << 8) | buf[off + hl + 3])
        if hl > n:
            return 4, marker, pt, seq, ts, ssrc, 0, 0
    plen = n - hl
    if b0 & 0x20:
        pad = buf[off + n - 1]
        if pad == 0 or pad > plen:
            return 5, marker, pt, seq, ts, ssrc, 0, 0
        plen -= pad
    if plen == 0:
        return 6, marker, pt, seq, ts, ssrc, 0, 0
    return 0, marker, pt, seq, ts, ssrc, off + hl, plen


def parse(data: bytes | bytearray | memoryview, offsets: Any, lengths: Any) -> ParsedPackets:
    """RFC 3550 fixed header, CSRC list, extension and padding of every packet."""
    buf, off, ln, _ = check_batch(data, offsets, lengths)
    n = off.shape[0]
    out = ParsedPackets(n)
    for i in range(n):
        r, m, pt, seq, ts, ssrc, po, pl = _parse_one(buf, int(off[i]), int(ln[i]))
        out.valid[i] = r == 0
        out.reason[i] = r
        out.marker[i] = m
        out.pt[i] = pt
        out.seq[i] = seq
        out.ts[i] = ts
        out.ssrc[i] = ssrc
        out.payload_offset[i] = po
        out.payload_length[i] = pl
    return out


class JitterBuffer:
    """One leg: RTP packets in, 20 ms frames on the call timeline out."""

    def __init__(
        self,
        *,
        call_start_us: int,
        window_ms: int = 300,
        fill: str = "silence",
        event_payload_types: tuple[int, ...] = (101,),
        clock_rate: int = SAMPLE_RATE,
    ) -> None:
        check_options(window_ms, fill, event_payload_types, clock_rate)
        self._start_us = int(call_start_us)
        self._clock = clock_rate
        self._f = clock_rate // FRAMES_PER_SECOND
        self._window = window_ms * clock_rate // 1000
        self._conceal = fill == "conceal"
        self._event_pts = frozenset(int(p) for p in event_payload_types)
        self._chunk = CHUNK_FRAMES * self._f
        self._ring = self._f * (-(-self._window // self._f) + CHUNK_FRAMES + 2)
        self._pcm = np.zeros(self._ring, dtype=np.int16)
        self._st = np.zeros(self._ring, dtype=np.uint8)
        self._reset_samples = RESET_SECONDS * clock_rate
        self._lead = max(self._window, self._f)  # a span may end at most this far ahead of arrival
        self._drift_block = DRIFT_BLOCK_SECONDS * clock_rate
        self._drift_threshold = self._f // DRIFT_THRESHOLD_DIV
        self._lag_wait = DRIFT_WAIT_MS * clock_rate // 1000
        self._base = 0  # first sample not yet emitted (a multiple of the frame)
        self._newest = 0  # end of the newest span placed on the timeline
        self._closed = False
        # stream (one SSRC between anchors)
        self._has_stream = False
        self._ssrc = 0
        self._gen = 0
        self._prev_ssrc = 0
        self._prev_valid = False
        self._switch_a = 0
        self._max_seq = 0
        self._ref_ts = 0
        self._offset = 0
        self._tag = [_NO_SEQ] * SEQ_SLOTS
        self._sstart = [0] * SEQ_SLOTS
        self._send = [0] * SEQ_SLOTS
        self._sshift = [0] * SEQ_SLOTS  # pos - ext_ts the packet was placed with
        self._last_pt = -1
        self._last_a = 0  # arrival position of the stream's last accepted packet
        # a packet that would start a new stream while the current one is live, held until
        # a consistent packet confirms it: (payload, arrival_us, marker, pt, seq, ts, ssrc,
        # kind, span, a, new, stat, accepted count when held)
        self._held: tuple[Any, ...] | None = None
        # anchor settling (see _settle)
        self._settling = False
        self._anchor_a = 0  # arrival position of the stream's anchor packet
        self._s_lo = 0  # lowest position the stream has written
        self._s_floor = 0  # where the previous stream ended: the stream never moves before it
        self._dref = 0  # the settled anchor's delay: what the drift block minimum should be
        self._lag = 0  # placement trails the RTP mapping this much (backward drift not yet taken)
        self._lag_a = 0  # arrival position of the backward drift step that made the lag
        # drift estimator
        self._blk_active = False
        self._blk_start = 0
        self._blk_min = 0
        # concealment
        self._last = np.zeros(self._f, dtype=np.int16)
        self._have_last = False
        self._lost_run = 0
        # outputs
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._gaps: list[list[int]] = []
        self._unsup: list[list[int]] = []  # start frame, frames, payload type
        self._unsup_pts: set[int] = set()
        self._events: list[list[int]] = []  # gen, ext_ts, code, start_pos, dur, vol
        self._out_pcm: list[npt.NDArray[np.int16]] = []
        self._out_kind: list[int] = []

    # -- public ---------------------------------------------------------------
    def push(
        self, data: bytes | bytearray | memoryview, offsets: Any, lengths: Any, arrival_us: Any
    ) -> Frames:
        if self._closed:
            raise RuntimeError("this jitter buffer was flushed; it accepts no more packets")
        buf, off, ln, arr = check_batch(data, offsets, lengths, arrival_us)
        assert arr is not None
        first = self._base // self._f
        for i in range(off.shape[0]):
            self._packet(buf, int(off[i]), int(ln[i]), int(arr[i]))
        return self._take(first)

    def flush(self, end_us: int | None = None) -> Frames:
        if self._closed:
            raise RuntimeError("this jitter buffer was already flushed")
        self._closed = True
        first = self._base // self._f
        target = self._newest
        if end_us is not None:
            target = max(target, self._arrival_pos(int(end_us)))
        # after the last packet the sender is silent, to the end of the last frame
        last = -(-target // self._f) * self._f
        if last > self._newest:
            self._cover_silent(self._newest, last, last)
        self._advance(last)
        return self._take(first)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def stat(self, key: str) -> int:
        return self._stats[key]

    @property
    def gaps(self) -> list[tuple[int, int]]:
        return [(g[0], g[1]) for g in self._gaps]

    @property
    def unsupported(self) -> list[tuple[int, int, int]]:
        return [(u[0], u[1], u[2]) for u in self._unsup]

    @property
    def unsupported_payload_types(self) -> list[int]:
        return sorted(self._unsup_pts)

    @property
    def events(self) -> list[TelephoneEvent]:
        c = self._clock
        return [
            TelephoneEvent(
                event=e[2],
                digit=_event_digit(e[2]),
                start_ms=_fdiv(e[3] * 1000, c),
                duration_ms=e[4] * 1000 // c,
                volume=e[5],
            )
            for e in self._events
        ]

    # -- timeline -------------------------------------------------------------
    def _take(self, first: int) -> Frames:
        n = len(self._out_kind)
        pcm = (
            np.concatenate(self._out_pcm).reshape(n, self._f)
            if n
            else np.zeros((0, self._f), dtype=np.int16)
        )
        kind = np.array(self._out_kind, dtype=np.uint8)
        self._out_pcm = []
        self._out_kind = []
        return Frames(np.arange(first, first + n, dtype=np.int64), pcm, kind)

    def _arrival_pos(self, us: int) -> int:
        return _fdiv((us - self._start_us) * self._clock + 500_000, 1_000_000)

    def _floor_frame(self, x: int) -> int:
        return _fdiv(x, self._f) * self._f

    def _emit_frame(self) -> None:
        f = self._f
        s = self._base % self._ring
        st = self._st[s : s + f]
        pcm = self._pcm[s : s + f]
        idx = self._base // f
        stats = self._stats
        unsup = st == _UNSUP
        has_unsup = bool(unsup.any())
        upt = int(pcm[int(np.argmax(unsup))]) if has_unsup else 0
        if has_unsup:
            pcm[unsup] = 0  # the slot held the payload type, not a sample
        if (st == _AUDIO).any():
            kind = FRAME_AUDIO
            out = pcm.copy()
            self._last = out
            self._have_last = True
            self._lost_run = 0
            stats["audio_frames"] += 1
            if (st == _EMPTY).any():  # part of the frame was lost: it is in a gap too
                stats["partial_frames"] += 1
                self._add_gap(idx)
        elif has_unsup:
            kind = FRAME_UNSUPPORTED
            out = np.zeros(f, dtype=np.int16)
            self._have_last = False
            self._lost_run = 0
            stats["unsupported_frames"] += 1
            u = self._unsup
            if u and u[-1][0] + u[-1][1] == idx and u[-1][2] == upt:
                u[-1][1] += 1
            else:
                u.append([idx, 1, upt])
        elif (st == _EMPTY).any():
            kind = FRAME_LOST
            if self._conceal and self._have_last:
                g = CONCEAL_GAIN_Q15[min(self._lost_run, len(CONCEAL_GAIN_Q15) - 1)]
                out = ((self._last.astype(np.int32) * g) >> 15).astype(np.int16)
            else:
                out = np.zeros(f, dtype=np.int16)
            self._lost_run += 1
            stats["lost_frames"] += 1
            self._add_gap(idx)
        else:
            kind = FRAME_SILENCE
            out = np.zeros(f, dtype=np.int16)
            self._have_last = False
            self._lost_run = 0
            stats["silence_frames"] += 1
        stats["frames"] += 1
        st[:] = _EMPTY
        pcm[:] = 0
        self._out_pcm.append(out)
        self._out_kind.append(kind)
        self._base += f

    def _add_gap(self, idx: int) -> None:
        if self._gaps and self._gaps[-1][0] + self._gaps[-1][1] == idx:
            self._gaps[-1][1] += 1
        else:
            self._gaps.append([idx, 1])

    def _advance(self, target: int) -> None:
        while self._base < target:
            self._emit_frame()

    def _slots(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Ring slices (slot_lo, slot_hi, position_lo) covering positions [lo, hi)."""
        r = self._ring
        s = lo % r
        if s + (hi - lo) <= r:
            return [(s, s + hi - lo, lo)]
        k = r - s
        return [(s, r, lo), (0, hi - lo - k, lo + k)]

    def _cover_silent(self, lo: int, hi: int, final: int) -> None:
        """Mark [lo, hi) as sender silence where nothing is known yet."""
        c = max(lo, self._base)
        while c < hi:
            self._advance(min(final, self._floor_frame(c)))
            ce = min(c + self._chunk, hi)
            for a, b, _ in self._slots(c, ce):
                st = self._st[a:b]
                st[st == _EMPTY] = _SILENT
            c = ce

    def _write_audio(
        self, pos: int, end: int, payload: bytes, table: npt.NDArray[np.int16], final: int
    ) -> None:
        c = max(pos, self._base)
        while c < end:
            self._advance(min(final, self._floor_frame(c)))
            ce = min(c + self._chunk, end)
            for a, b, p in self._slots(c, ce):
                src = np.frombuffer(payload, dtype=np.uint8, count=b - a, offset=p - pos)
                st = self._st[a:b]
                free = st != _AUDIO
                self._pcm[a:b][free] = table[src[free]]
                st[free] = _AUDIO
            c = ce

    def _write_unsupported(self, pos: int, end: int, pt: int, final: int) -> None:
        """Mark the span as audio in an unsupported codec where no audio was written."""
        c = max(pos, self._base)
        while c < end:
            self._advance(min(final, self._floor_frame(c)))
            ce = min(c + self._chunk, end)
            for a, b, _ in self._slots(c, ce):
                st = self._st[a:b]
                free = st != _AUDIO
                self._pcm[a:b][free] = pt
                st[free] = _UNSUP
            c = ce

    def _all_audio(self, lo: int, hi: int) -> bool:
        if hi > self._base + self._ring:
            return False
        return all(bool((self._st[a:b] == _AUDIO).all()) for a, b, _ in self._slots(lo, hi))

    def _start_stream(self, ssrc: int, seq: int, ts: int, a: int, span: int) -> None:
        # after the newest span, but never ending more than the lead ahead of arrival
        pos = max(a - span, min(self._newest, a + self._lead - span))
        self._has_stream = True
        self._ssrc = ssrc
        self._gen += 1
        self._max_seq = seq
        self._ref_ts = ts
        self._offset = pos - ts
        self._tag = [_NO_SEQ] * SEQ_SLOTS
        self._blk_active = False
        self._settling = True
        self._anchor_a = a
        self._s_lo = pos
        self._s_floor = self._newest
        self._dref = a - (pos + span)  # 0 unless the anchor had to continue after the newest span
        self._lag = 0
        self._last_a = a

    def _settle(self, delay: int) -> None:
        """A packet of a settling stream arrived ``dref - delay`` samples early: move the stream."""
        lo = max(self._base, self._s_floor)
        s = min(self._dref - delay, self._s_lo - lo)  # not onto emitted frames or the last stream
        if s > 0:
            # everything from s_lo on is this stream's and unemitted, within [base, base + ring)
            src = np.arange(self._s_lo, self._newest) % self._ring
            dst = np.arange(self._s_lo - s, self._newest - s) % self._ring
            pcm = self._pcm[src]
            st = self._st[src]
            self._pcm[dst] = pcm
            self._st[dst] = st
            gone = np.arange(max(self._newest - s, self._s_lo), self._newest) % self._ring
            self._pcm[gone] = 0  # what the stream left behind is not known any more
            self._st[gone] = _EMPTY
            self._offset -= s
            self._newest -= s
            self._s_lo -= s
            for k in range(SEQ_SLOTS):
                if self._tag[k] != _NO_SEQ:
                    self._sstart[k] -= s
                    self._sshift[k] -= s
                    self._send[k] -= s
            for e in reversed(self._events):
                if e[0] != self._gen:
                    break
                e[3] -= s
            self._stats["anchor_adjustments"] += 1
        else:
            s = 0
        self._dref = delay + s
        self._blk_active = False

    def _drift(self, a: int, end: int) -> None:
        delay = a - end
        if not self._blk_active:
            self._blk_active = True
            self._blk_start = a
            self._blk_min = delay
            return
        self._blk_min = min(self._blk_min, delay)
        if a - self._blk_start >= self._drift_block:
            step = self._blk_min - self._dref
            if step > self._drift_threshold:  # slow sender clock: a forward step cancels the lag
                self._offset += step
                self._lag -= min(step, self._lag)
                self._stats["drift_adjustments"] += 1
            elif step < -self._drift_threshold:  # fast sender clock: taken back later (_packet)
                self._offset += step
                self._lag -= step
                self._lag_a = a
                self._stats["drift_adjustments"] += 1
            self._blk_active = False

    def _packet(self, buf: bytes, off: int, n: int, arrival_us: int) -> None:
        stats = self._stats
        stats["packets"] += 1
        stats["bytes"] += n
        r, marker, pt, seq, ts, ssrc, po, plen = _parse_one(buf, off, n)
        if r:
            stats["malformed"] += 1
            stats["malformed_" + MALFORMED_REASONS[r - 1]] += 1
            return
        if pt in DECODERS:
            kind = _KIND_AUDIO
            span = plen
        elif pt == PT_CN:
            kind = _KIND_CN
            span = 0
        elif pt in self._event_pts:
            if plen < 4:
                stats["malformed"] += 1
                stats["malformed_bad_event"] += 1
                return
            kind = _KIND_EVENT
            span = (buf[po + 2] << 8) | buf[po + 3]
        else:
            stats["unsupported_payload_type"] += 1
            kind = _KIND_UNSUPPORTED
            num, den = UNSUPPORTED_TICKS_PER_BYTE.get(pt, (0, 1))
            span = min(max(plen * num // den, 1), 0xFFFF) if num else self._f
        self._place(buf, arrival_us, marker, pt, seq, ts, ssrc, po, plen, kind, span, 0)

    def _consistent(self, ssrc: int, seq: int, ts: int, a: int, span: int) -> bool:
        """Does this packet confirm the held one (same source, near in sequence and time)?"""
        h = self._held
        if h is None or h[6] != ssrc or h[12] != self._stats["accepted"]:
            return False  # another source, or the current stream went on after it
        d = (seq - h[4]) & 0xFFFF
        dseq = d - 0x10000 if d >= 0x8000 else d
        if dseq == 0 or dseq > PROBATION_SEQ or dseq < -PROBATION_SEQ:
            return False
        d = (ts - h[5]) & 0xFFFFFFFF
        dts = d - (1 << 32) if d >= (1 << 31) else d
        delay = (a - h[9]) - (dts + span - h[8])
        return -self._lead <= delay <= self._lead

    def _ahead(self, kind: int) -> int:
        """How far a span of this kind may end ahead of its arrival position."""
        if self._settling and kind != _KIND_EVENT:
            return self._lead  # an early (bursty) sender is still being settled
        # a settled stream is ahead of arrival by at most -dref, its pending lag, and drift
        # (under a frame); an event reports its duration so far: it ends when it is sent
        return min(self._lead, self._f + self._lag + max(0, -self._dref))

    def _place(
        self,
        buf: bytes,
        arrival_us: int,
        marker: int,
        pt: int,
        seq: int,
        ts: int,
        ssrc: int,
        po: int,
        plen: int,
        kind: int,
        span: int,
        forced: int,
    ) -> None:
        """Place one parsed packet (``forced``: a confirmed held packet, anchoring its stream)."""
        stats = self._stats
        a = self._arrival_pos(arrival_us)
        anchor = False
        new = forced
        ext_seq = ext_ts = 0
        if forced:
            pass
        elif not self._has_stream:
            anchor = True
        elif ssrc != self._ssrc:
            if self._prev_valid and ssrc == self._prev_ssrc and a - self._switch_a <= self._window:
                stats["stale_ssrc"] += 1
                return
            new = _NEW_SSRC
        else:
            d = (seq - self._max_seq) & 0xFFFF
            ext_seq = self._max_seq + (d - 0x10000 if d >= 0x8000 else d)
            d = (ts - self._ref_ts) & 0xFFFFFFFF
            ext_ts = self._ref_ts + (d - (1 << 32) if d >= (1 << 31) else d)
            delay = a - (ext_ts + self._offset + span)
            if delay > self._reset_samples or delay < -self._reset_samples:
                if ext_seq > self._max_seq or ext_seq < self._max_seq - MAX_MISORDER:
                    new = _NEW_RESET
                else:
                    stats["inconsistent"] += 1
                    return
        if new and not forced and a - self._last_a <= self._lead:
            # the current stream is live: a new stream needs a second packet to confirm it
            if kind == _KIND_EVENT:  # an event never starts a stream while one is live
                stats["unconfirmed_ssrc" if new == _NEW_SSRC else "event_span"] += 1
                return
            if self._consistent(ssrc, seq, ts, a, span):
                h = self._held
                assert h is not None
                self._held = None
                stats[h[11]] -= 1
                self._place(
                    h[0], h[1], h[2], h[3], h[4], h[5], h[6], 0, len(h[0]), h[7], h[8], h[10]
                )
                self._place(buf, arrival_us, marker, pt, seq, ts, ssrc, po, plen, kind, span, 0)
                return
            stat = "unconfirmed_ssrc" if new == _NEW_SSRC else "timestamp_jump"
            stats[stat] += 1
            self._held = (
                bytes(buf[po : po + plen]), arrival_us, marker, pt, seq, ts, ssrc, kind, span,
                a, new, stat, stats["accepted"],
            )  # fmt: skip
            return
        if new == _NEW_SSRC:
            self._prev_ssrc = self._ssrc
            self._prev_valid = True
            self._switch_a = a
            stats["ssrc_changes"] += 1
            anchor = True
        elif new == _NEW_RESET:
            stats["resets"] += 1
            anchor = True
        if anchor:
            ext_seq = seq
            ext_ts = ts
            self._start_stream(ssrc, seq, ts, a, span)
        slot = ext_seq & (SEQ_SLOTS - 1)
        if self._tag[slot] == ext_seq:
            stats["duplicates"] += 1
            return
        if (
            self._settling
            and not anchor
            and (a - self._anchor_a > self._window or self._base > self._s_lo)
        ):
            self._settling = False
        if not anchor and ext_ts + self._offset + self._lag + span - a > self._ahead(kind):
            # ends further ahead of its arrival than its sender can be: a wild timestamp
            stats["event_span" if kind == _KIND_EVENT else "timestamp_jump"] += 1
            return
        if self._settling and not anchor:
            delay = a - (ext_ts + self._offset + span)
            if delay < self._dref:
                self._settle(delay)
        pos = ext_ts + self._offset + self._lag
        base = self._base
        p = (ext_seq - 1) & (SEQ_SLOTS - 1)
        nx = (ext_seq + 1) & (SEQ_SLOTS - 1)
        take = 0
        if ext_seq < self._max_seq and not anchor:
            # reordered: placed as its neighbours were, whatever drift did since
            if self._tag[nx] == ext_seq + 1:
                pos = ext_ts + self._sshift[nx]
            elif self._tag[p] == ext_seq - 1:
                pos = ext_ts + self._sshift[p]
        elif self._lag and ext_seq == self._max_seq + 1 and self._tag[p] == ext_seq - 1:
            # take back some lag: from sender silence before the packet, or (no silence came
            # within DRIFT_WAIT_MS of the step) one sample a frame from audio
            if pos > self._send[p]:
                take = pos - self._send[p]
            elif pos == self._send[p] and kind == _KIND_AUDIO and a - self._lag_a >= self._lag_wait:
                take = min(span // self._f if span >= 2 * self._f else 1, span - 1)
            take = max(0, min(take, self._lag, pos - base))
            pos -= take
        end = pos + span
        if end - a > self._ahead(kind):
            stats["event_span" if kind == _KIND_EVENT else "timestamp_jump"] += 1
            return
        if (end <= base) if span else (pos < base):
            stats["late"] += 1
            return
        if kind == _KIND_AUDIO and self._all_audio(max(pos, base), end):
            stats["overlap"] += 1
            return
        # accepted
        stats["accepted"] += 1
        self._last_a = a
        if take:
            self._lag -= take
            # audio the packet cannot write there any more
            stats["drift_dropped_samples"] += sum(
                int((self._st[a:b] == _AUDIO).sum()) for a, b, _ in self._slots(pos, pos + take)
            )
        if pos < base:
            stats["late_partial"] += 1
        if marker:
            stats["marker_packets"] += 1
        if kind == _KIND_AUDIO:
            stats["audio_packets"] += 1
            if self._last_pt >= 0 and pt != self._last_pt:
                stats["payload_type_changes"] += 1
            self._last_pt = pt
        elif kind == _KIND_CN:
            stats["comfort_noise_packets"] += 1
        elif kind == _KIND_EVENT:
            stats["telephone_event_packets"] += 1
        else:
            stats["unsupported_packets"] += 1
            self._unsup_pts.add(pt)
        if ext_seq > self._max_seq:
            self._max_seq = ext_seq
            self._ref_ts = ext_ts
        self._tag[slot] = ext_seq
        if pos < self._s_lo:
            self._s_lo = pos
        self._sstart[slot] = pos
        self._send[slot] = end
        self._sshift[slot] = pos - ext_ts
        prev_newest = self._newest
        if end > self._newest:
            self._newest = end
        final = self._floor_frame(self._newest - self._window)
        if anchor:
            self._cover_silent(prev_newest, pos, final)
        elif self._tag[p] == ext_seq - 1 and self._send[p] < pos:
            self._cover_silent(self._send[p], pos, final)
        if kind == _KIND_AUDIO:
            self._write_audio(pos, end, buf[po : po + plen], DECODERS[pt], final)
        elif kind == _KIND_EVENT:
            self._cover_silent(pos, end, final)
            self._event(buf, po, ext_ts, pos, span)
        elif kind == _KIND_UNSUPPORTED:
            self._write_unsupported(pos, end, pt, final)
        if self._tag[nx] == ext_seq + 1 and self._sstart[nx] > end:
            self._cover_silent(end, self._sstart[nx], final)
        self._advance(final)
        self._drift(a, ext_ts + self._offset + span)  # the delay against the RTP mapping

    def _event(self, buf: bytes, po: int, ext_ts: int, pos: int, dur: int) -> None:
        code = buf[po]
        vol = buf[po + 1] & 0x3F
        for e in self._events[-4:]:
            if e[0] == self._gen and e[1] == ext_ts and e[2] == code:
                if dur > e[4]:
                    e[4] = dur
                e[5] = vol
                return
        self._events.append([self._gen, ext_ts, code, pos, dur, vol])
