# cython: language_level=3
"""RTP parse (RFC 3550) and the per-leg jitter buffer: packets in, frames on the call timeline out.

Batch in, batch out: ``JitterBuffer.push`` takes one buffer holding many
packets plus their offsets, lengths and arrival times, runs the whole packet
loop in C with the GIL released, and returns the frames that became final.
engine/callvault/media/jitter_ref.py is the pure-Python twin (same outputs bit for bit,
tests/ext/test_jitter_differential.py); the containers (Frames, TelephoneEvent,
ParsedPackets), the option and batch checks and the stat names both take
from the base module callvault.rtpdefs (this module never imports its twin).

Timeline model
--------------
Frames, the call start (``call_start_us``) and frame kinds are the call
timeline of docs/format.md section 1 (F = 160 samples a frame, the same
start for every leg); this section is the jitter buffer's rules on it. Units
are samples of the RTP clock (8000 Hz for G.711).

*Stream and anchor.* A stream is the packets of one SSRC between anchors.
A packet's span is [pos, pos + len): len is the payload size for G.711
(one byte, one sample), 0 for comfort noise (a point) and the event
duration for an RFC 4733 event. The first packet of a stream is anchored
from its arrival time: a = round((arrival_us - call_start_us) * rate / 1e6)
and the span is placed to END at a (a packet leaves the sender when its
last sample was captured; anchoring its end keeps legs with different
packet sizes aligned), but never before the newest span already placed,
so a new stream continues the timeline, unless that would end it more than
the lead after its arrival (*Bounds*):
``pos = max(a - len, min(newest, a + lead - len))``.
Every later packet of the stream is placed by its RTP timestamp:
``pos = ext_ts + offset`` (plus a drift ``lag``, below); early packets of
the stream's first window may still move the anchor (*Settling*). Anchors happen at the first packet, at an SSRC
change (re-INVITE, transfer: counted in ``ssrc_changes``) and at a reset.

*Wrap.* The 16-bit sequence number and the 32-bit timestamp are extended to
64 bits independently: a packet's extended value is the reference (the
highest extended sequence number seen, and the extended timestamp of that
packet) plus the signed 16-bit (32-bit) difference. Both wrap separately or
together without effect on positions.

*Reset.* If a packet's span end is more than 3 s away from its arrival
position (``a - end``, after drift correction normally within tens of ms),
its timestamp cannot be believed. If its sequence number is newer than the
highest (or more than 100 behind, RFC 3550 A.1 MAX_MISORDER: a restart) the
stream is re-anchored from arrival (``resets``, subject to *Bounds*);
otherwise it is an old packet with a wild timestamp and is dropped
(``inconsistent``). So a bogus timestamp never produces more filler than the
real time that passed.

*Bounds* (a hostile network never stretches a call). The *lead* is
max(window, F): how far after its arrival position a span may end.
(1) New streams. A packet that would start a new stream (an SSRC change, or
a reset) while the current stream is *live* (a packet of it was accepted
within the lead before this one's arrival) is not believed at once: it is
held (a copy, counted in ``unconfirmed_ssrc`` for a new SSRC, else in
``timestamp_jump``) and replaces any packet held before. The next packet
that would start a new stream confirms it when it has the same SSRC, a
sequence number within 8 of it (not equal), ``(a - a_held) - (dts + len -
len_held)`` within the lead (dts: the signed 32-bit timestamp difference),
and no packet was accepted since it was held; then the held packet's count
is taken back, it anchors the stream as above (``ssrc_changes`` or
``resets``), and the confirming packet follows. A single packet with a
random SSRC or timestamp is therefore dropped; a real re-INVITE or restart
loses nothing. A stream that is not live (nothing accepted for more than
the lead) is replaced at once, as the first stream is started. An RFC 4733
event never starts a stream while one is live (dropped: ``unconfirmed_ssrc``
for a new SSRC, else ``event_span``). (2) Spans ahead of arrival. A packet
of the current stream whose span would end more than its *ahead* bound
after its arrival position (checked with the mapping before settling, and
again where it is placed) is dropped, counted in ``event_span`` for an event
and in ``timestamp_jump`` otherwise. The bound is the lead while the stream
is settling (an early, bursty sender); once settled it is F plus the pending
drift lag plus ``-dref`` (how early the settled sender was found to be),
never above the lead; for an event it is always the latter (an event
reports its duration so far: it ends when it is sent). (3) Anchors never end
a span more than the lead after arrival (above). Together: ``newest`` never
exceeds the largest arrival position plus the lead, so a leg lasts at most
its wall-clock span (its last arrival, or ``flush``'s ``end_us``) plus the
lead, whatever timestamps, SSRCs and event durations arrive. Malformed
packets (too short, CSRC list or extension past the end, bad padding, bad
version, empty) are counted by reason and never touch the timeline. A packet
with the stream's own SSRC, its next sequence numbers and a plausible
timestamp cannot be told from the stream here (the sidecar's source
latching keeps other sources out).

*Codecs.* Audio is decoded through a table of payload type -> decoder
(``DECODER``: PCMU 0 and PCMA 8, one byte a sample); a codec is one more
entry and its decode step. Comfort noise (13) and the declared event types
are not audio. Any other payload type is *unsupported*: its packets
(counted in ``unsupported_payload_type`` when seen) are placed like audio,
with a span from ``rtpdefs.UNSUPPORTED_TICKS_PER_BYTE`` (G.722 a byte a
tick; G.729, GSM, G.723.1, G.728 and DVI4 by their fixed rates) or one
frame a packet for any other type, and mark their samples unsupported where
no audio was written (the ring's pcm slot holds the payload type). A frame
with decoded audio is FRAME_AUDIO; else a frame with an unsupported sample
is FRAME_UNSUPPORTED (zeros; counted in ``unsupported_frames``; runs of
``(start_frame, frames, payload_type)`` in ``unsupported``, never in
``gaps``); concealment stops there as after silence. Accepted such packets
count in ``unsupported_packets`` (part of ``accepted``).

*Window and finality.* ``newest`` is the largest span end placed so far.
After each packet, every frame that ends at or before
``floor_frame(newest - window)`` is final and emitted (so the decision
depends only on the packet sequence: how a stream is cut into batches never
changes the output). Emitted frames are never revisited; ``flush`` emits
the rest and, given ``end_us``, fills up to the end of the frame containing
``end_us`` (exactly to it when it falls on a frame boundary). Held samples
live in a C ring of ``ceil(window/F) + 27`` frames; spans are written in
chunks of 25 frames, emitting what is already final before each chunk, so
packets up to 65535 samples and filler of any length fit.

*Late and duplicate.* A packet whose whole span lies in emitted frames is
``late`` and dropped. A packet straddling the emitted boundary keeps its
unemitted part (counted once as accepted and in ``late_partial``). A packet
whose SSRC and extended sequence number were already received (the last
1024 are remembered) is a duplicate; an audio packet with a new sequence
number whose every unemitted sample already holds audio is dropped as
``overlap``. Samples are first-writer-wins: audio never overwrites audio,
so nothing is stored twice. After an SSRC change, packets of the previous
SSRC arriving within one window are stragglers (``stale_ssrc``), dropped
rather than re-anchoring twice.

*Loss and silence.* Each held sample is empty, audio or silent. When two
packets with consecutive extended sequence numbers are both known, the
space between their spans is sender silence (DTX, a talkspurt starting with
the marker bit, comfort noise (PT 13) spanning to the next packet, an
RFC 4733 event's span); so is the space before an anchor and after the last
packet when ``flush(end_us)`` extends the leg. What stays empty is loss.
A frame with any audio is FRAME_AUDIO (its missing samples are zeros); else
any empty sample makes it FRAME_LOST; else FRAME_SILENCE. Every frame with
an empty sample, FRAME_LOST or a partly received FRAME_AUDIO, is in a gap
(merged runs in ``gaps``; FRAME_LOST ones counted in ``lost_frames``, the
others in ``partial_frames``): packets rarely start
on a frame boundary, so one lost 20 ms packet usually touches two frames. Lost frames are zeros, or with
fill="conceal" the last audio frame repeated at gain 0.75, 0.5, 0.25, then
zeros (Q15 integer arithmetic, identical in both twins); concealment stops
after a silent frame.

*Settling.* The anchor assumes the first packet left its sender when its
last sample was captured and crossed the network undelayed. Neither holds
for every sender: ffmpeg's RTP muxer (``-re``) sends each 2048-sample input
block at once, as a 1460- and a 588-sample packet, when the block's FIRST
sample is due, so the second packet arrives 588 samples "before" its end;
and a first packet delayed by jitter places the whole stream late. So for
the stream's first ``window`` of arrival time after its anchor, while none
of its samples has been emitted, a packet whose delay ``a - end`` is below
the stream's reference delay ``dref`` (0 after a plain anchor) shows the
anchor was too late by ``dref - delay``: the stream moves earlier by that
much instead of dropping anything. Its offset, ``newest``, its remembered
packet spans, its events' starts and the samples it wrote in the ring
(audio, silent and empty marks alike) all move back; what it leaves at the
end becomes empty again. It never moves onto emitted frames (``base``) nor
before where the previous stream of the leg ended; clamped there, the part
it could not move becomes its reference delay (``dref = delay + moved``,
negative): the stream stays that much late and loses nothing. An anchor
that had to continue after the newest span starts with that negative
reference too. Each move is counted in ``anchor_adjustments`` and restarts
the drift block, so the block minimum starts from the settled anchor.
Settling does nothing for a sender that is not early: a paced sender's
packets all have delay >= 0 after an undelayed anchor.

*Drift.* A sender clock off by up to 0.1 % moves the RTP position against
the arrival position by up to 8 samples a second. For every accepted packet
the delay ``a - end`` against the RTP mapping is taken; the minimum over a
block of 2 s of arrival time (robust to jitter: some packet of a block
arrives nearly undelayed) should be ``dref``. If the block minimum is more
than a quarter frame (5 ms) away from it, the mapping (``offset``) moves by
the difference, counted in ``drift_adjustments``. A forward step (slow
sender) inserts that many samples, marked silent, not lost. A backward step
(fast sender: more samples than real time) cannot be recorded without
giving some samples up, so it does not move the packets at once: placement
trails the mapping by a ``lag`` (``pos = ext_ts + offset + lag``) that is
taken back later, only by the next in-order packet (sequence number one
above the highest) whose predecessor is known. Where the space between the
two is sender silence (their numbers are consecutive: DTX, comfort noise,
an event), the packet moves back into it by up to the lag: nothing is
lost, the silence is shorter. If no silence comes
within 500 ms (``DRIFT_WAIT_MS``) of the step, an audio packet that follows
its predecessor contiguously moves back by one sample per 20 ms it holds
(one for a packet up to 39 ms, never its only sample): its first samples
land on audio already written and are dropped (first writer wins), spread
one sample per packet instead of one chunk per step, and counted in
``drift_dropped_samples``. A forward step first cancels any lag. A packet
reordered behind the highest sequence number is placed with the mapping its
known successor (else predecessor) was placed with, so a step or a take
between them opens no hole and drops nothing. Each leg stays within about
half a frame of its own arrival clock (threshold plus one block of drift
plus the minimum network delay plus a pending lag), so two legs stay within
one frame of each other and of the call.

*Events.* RFC 4733 packets (PT in ``event_payload_types``) are never decoded
as audio. An event is keyed by (stream, extended timestamp, code); its start
is the timestamp's position, its duration the largest seen (the final
packet's; the redundant end packets count once). Their span is silence
unless audio covers it.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from g711 cimport cv_g711_tables

# Shared with the pure-Python twin through a base module, never through the twin itself.
from callvault import rtpdefs
from callvault.rtpdefs import (
    MALFORMED_REASONS,
    STAT_KEYS,
    Frames,
    ParsedPackets,
    TelephoneEvent,
    UNSUPPORTED_TICKS_PER_BYTE,
    check_batch,
    check_options,
    event_digit,
)
from callvault.timeline import FRAMES_PER_SECOND, SAMPLE_RATE

cnp.import_array()

cdef enum:
    KIND_AUDIO = 0  # FRAME_AUDIO
    KIND_LOST = 1  # FRAME_LOST
    KIND_SILENCE = 2  # FRAME_SILENCE
    KIND_UNSUPPORTED = 3  # FRAME_UNSUPPORTED

FRAME_AUDIO = KIND_AUDIO
FRAME_LOST = KIND_LOST
FRAME_SILENCE = KIND_SILENCE
FRAME_UNSUPPORTED = KIND_UNSUPPORTED
assert (FRAME_AUDIO, FRAME_LOST, FRAME_SILENCE, FRAME_UNSUPPORTED) == (
    rtpdefs.FRAME_AUDIO, rtpdefs.FRAME_LOST, rtpdefs.FRAME_SILENCE, rtpdefs.FRAME_UNSUPPORTED
)

cdef int16_t ULAW[256]
cdef int16_t ALAW[256]
cv_g711_tables(ULAW, ALAW)

# The decoders: payload type -> expansion table (one byte, one sample at 8 kHz);
# NULL: no decoder (placed as "unsupported codec" unless CN or a declared event).
cdef const int16_t *DECODER[128]
for _p in range(128):
    DECODER[_p] = NULL
DECODER[0] = &ULAW[0]
DECODER[8] = &ALAW[0]
# ticks per payload byte of unsupported payload types (rtpdefs.UNSUPPORTED_TICKS_PER_BYTE)
cdef int64_t UNSUP_NUM[128]
cdef int64_t UNSUP_DEN[128]
for _p in range(128):
    UNSUP_NUM[_p] = 0
    UNSUP_DEN[_p] = 1
for _p, (_num, _den) in UNSUPPORTED_TICKS_PER_BYTE.items():
    UNSUP_NUM[_p] = _num
    UNSUP_DEN[_p] = _den

cdef enum:
    PT_PCMU = 0  # RFC 3551 mu-law
    PT_PCMA = 8  # RFC 3551 A-law
    PT_CN = 13  # RFC 3389 comfort noise
    ST_EMPTY = 0
    ST_AUDIO = 1
    ST_SILENT = 2
    ST_UNSUP = 3  # audio in a codec no decoder handles; the pcm slot holds its payload type
    K_AUDIO = 0
    K_CN = 1
    K_EVENT = 2
    K_UNSUPPORTED = 3
    NEW_SSRC = 1  # a packet would start a new stream: a new SSRC ...
    NEW_RESET = 2  # ... or a timestamp jump of the same SSRC (a restart)
    PROBATION_SEQ = 8  # a held new-stream packet is confirmed by one this close in sequence
    SEQ_SLOTS = 1024  # remembered packets per stream (duplicates, neighbours); power of two
    CHUNK_FRAMES = 25  # spans are written in chunks of this many frames
    RESET_SECONDS = 3  # |arrival - RTP position| beyond this is a reset, not jitter
    DRIFT_BLOCK_SECONDS = 2  # minimum delay taken over blocks this long
    DRIFT_THRESHOLD_DIV = 4  # the mapping moves when the delay is off by more than F / 4
    DRIFT_WAIT_MS = 500  # after a backward drift step, wait this long for sender silence to absorb it
    MAX_MISORDER = 100  # RFC 3550 A.1
    EVENT_LOOKBACK = 4  # an event update matches one of the last few events

# stat indexes, in the order of rtpdefs.STAT_KEYS
cdef enum:
    S_PACKETS, S_BYTES, S_ACCEPTED, S_AUDIO, S_CN, S_EVENT, S_MALFORMED,
    S_MAL0, S_MAL1, S_MAL2, S_MAL3, S_MAL4, S_MAL5, S_MAL6,
    S_DUP, S_LATE, S_UNSUPPORTED, S_STALE, S_INCONSISTENT, S_OVERLAP, S_LATE_PARTIAL, S_MARKER,
    S_FRAMES, S_AUDIO_FRAMES, S_LOST_FRAMES, S_SILENCE_FRAMES, S_PARTIAL_FRAMES, S_SSRC_CHANGES,
    S_PT_CHANGES, S_RESETS, S_DRIFT, S_DRIFT_DROPPED, S_ANCHOR,
    S_TS_JUMP, S_EVENT_SPAN, S_UNCONFIRMED_SSRC, S_UNSUP_PACKETS, S_UNSUP_FRAMES, NSTATS

assert len(STAT_KEYS) == NSTATS, "stat enum out of step with rtpdefs.STAT_KEYS"
_STAT_INDEX = {k: i for i, k in enumerate(STAT_KEYS)}
assert STAT_KEYS[S_TS_JUMP] == "timestamp_jump" and STAT_KEYS[S_UNSUP_FRAMES] == "unsupported_frames"
assert len(MALFORMED_REASONS) == 7
assert (PT_PCMU, PT_PCMA, PT_CN) == (rtpdefs.PT_PCMU, rtpdefs.PT_PCMA, rtpdefs.PT_CN)

cdef int32_t CONCEAL_GAIN_Q15[4]
CONCEAL_GAIN_Q15[:] = [24576, 16384, 8192, 0]
cdef int64_t NO_SEQ = -(<int64_t>1 << 62)

cdef struct Hdr:
    int marker
    int pt
    uint32_t seq
    uint32_t ts
    uint32_t ssrc
    int64_t poff
    int64_t plen

cdef struct Ev:
    int64_t gen
    int64_t ext_ts
    int64_t code
    int64_t start
    int64_t dur
    int64_t vol

cdef struct Held:
    # a packet that would start a new stream while the current one is live (see Bounds)
    int valid
    Hdr h  # poff = 0: the payload is in Leg.held_buf
    int64_t arrival_us, a, span
    int64_t accepted  # the accepted count when it was held: the current stream went on if it grew
    int kind, new, stat

cdef struct Leg:
    int64_t start_us, clock, f, window, chunk, ring, reset, dblock, drift_threshold, lag_wait
    int64_t lead  # a span may end at most this far ahead of its arrival position
    int conceal
    uint8_t evpt[128]
    int16_t *pcm
    uint8_t *st
    int64_t base, newest
    int has_stream
    uint32_t ssrc
    int64_t gen
    uint32_t prev_ssrc
    int prev_valid
    int64_t switch_a, max_seq, ref_ts, offset
    int settling  # the stream's anchor may still move earlier (see settle)
    int64_t anchor_a, s_lo, s_floor, dref
    int64_t lag  # placement trails the RTP mapping by this much (backward drift not yet taken)
    int64_t lag_a  # arrival position of the backward drift step that made the lag
    int64_t tag[SEQ_SLOTS]
    int64_t sstart[SEQ_SLOTS]
    int64_t sshift[SEQ_SLOTS]  # pos - ext_ts the packet was placed with
    int64_t send[SEQ_SLOTS]
    int last_pt
    int64_t last_a  # arrival position of the stream's last accepted packet
    Held held
    uint8_t *held_buf
    int64_t held_cap
    int64_t *unsup  # runs of FRAME_UNSUPPORTED: start, frames, payload type
    int64_t n_unsup, cap_unsup
    uint8_t unsup_pt[128]  # payload types of accepted unsupported packets
    int blk_active
    int64_t blk_start, blk_min
    int16_t *last
    int have_last
    int64_t lost_run
    int64_t stats[NSTATS]
    int64_t *gaps
    int64_t n_gaps, cap_gaps
    Ev *ev
    int64_t n_ev, cap_ev
    int16_t *out_pcm
    uint8_t *out_kind
    int64_t n_out, cap_out
    int oom


cdef inline int64_t fdiv(int64_t a, int64_t b) noexcept nogil:
    """Floor division for b > 0 (Python's //)."""
    cdef int64_t q = a / b
    if (a % b) != 0 and a < 0:
        q -= 1
    return q


cdef inline int64_t floor_frame(Leg *L, int64_t x) noexcept nogil:
    return fdiv(x, L.f) * L.f


cdef inline int64_t arrival_pos(Leg *L, int64_t us) noexcept nogil:
    return fdiv((us - L.start_us) * L.clock + 500000, 1000000)


cdef inline int parse_one(const uint8_t *buf, int64_t off, int64_t n, Hdr *h) noexcept nogil:
    """Header of one packet into h; returns 0 or 1 + index into MALFORMED_REASONS."""
    cdef int64_t hl, plen, pad
    cdef uint8_t b0
    h.marker = 0
    h.pt = 0
    h.seq = 0
    h.ts = 0
    h.ssrc = 0
    h.poff = 0
    h.plen = 0
    if n < 12:
        return 1
    b0 = buf[off]
    h.marker = buf[off + 1] >> 7
    h.pt = buf[off + 1] & 0x7F
    h.seq = (<uint32_t>buf[off + 2] << 8) | buf[off + 3]
    h.ts = ((<uint32_t>buf[off + 4] << 24) | (<uint32_t>buf[off + 5] << 16)
            | (<uint32_t>buf[off + 6] << 8) | buf[off + 7])
    h.ssrc = ((<uint32_t>buf[off + 8] << 24) | (<uint32_t>buf[off + 9] << 16)
              | (<uint32_t>buf[off + 10] << 8) | buf[off + 11])
    if (b0 >> 6) != 2:
        return 2
    hl = 12 + 4 * (b0 & 0x0F)
    if hl > n:
        return 3
    if b0 & 0x10:
        if hl + 4 > n:
            return 4
        hl += 4 + 4 * ((<int64_t>buf[off + hl + 2] << 8) | buf[off + hl + 3])
        if hl > n:
            return 4
    plen = n - hl
    if b0 & 0x20:
        pad = buf[off + n - 1]
        if pad == 0 or pad > plen:
            return 5
        plen -= pad
    if plen == 0:
        return 6
    h.poff = off + hl
    h.plen = plen
    return 0


cdef int16_t *out_slot(Leg *L) noexcept nogil:
    """Room for one more output frame (NULL and L.oom on allocation failure)."""
    cdef int64_t cap
    cdef int16_t *p
    cdef uint8_t *k
    if L.n_out == L.cap_out:
        cap = L.cap_out * 2 if L.cap_out else 64
        p = <int16_t *>realloc(L.out_pcm, cap * L.f * sizeof(int16_t))
        if p == NULL:
            L.oom = 1
            return NULL
        L.out_pcm = p
        k = <uint8_t *>realloc(L.out_kind, cap)
        if k == NULL:
            L.oom = 1
            return NULL
        L.out_kind = k
        L.cap_out = cap
    return L.out_pcm + L.n_out * L.f


cdef void add_gap(Leg *L, int64_t idx) noexcept nogil:
    cdef int64_t cap
    cdef int64_t *g
    if L.n_gaps and L.gaps[2 * L.n_gaps - 2] + L.gaps[2 * L.n_gaps - 1] == idx:
        L.gaps[2 * L.n_gaps - 1] += 1
        return
    if L.n_gaps == L.cap_gaps:
        cap = L.cap_gaps * 2 if L.cap_gaps else 16
        g = <int64_t *>realloc(L.gaps, cap * 2 * sizeof(int64_t))
        if g == NULL:
            L.oom = 1
            return
        L.gaps = g
        L.cap_gaps = cap
    L.gaps[2 * L.n_gaps] = idx
    L.gaps[2 * L.n_gaps + 1] = 1
    L.n_gaps += 1


cdef void add_unsup(Leg *L, int64_t idx, int64_t pt) noexcept nogil:
    cdef int64_t cap
    cdef int64_t *u
    cdef int64_t k = 3 * L.n_unsup
    if L.n_unsup and L.unsup[k - 3] + L.unsup[k - 2] == idx and L.unsup[k - 1] == pt:
        L.unsup[k - 2] += 1
        return
    if L.n_unsup == L.cap_unsup:
        cap = L.cap_unsup * 2 if L.cap_unsup else 8
        u = <int64_t *>realloc(L.unsup, cap * 3 * sizeof(int64_t))
        if u == NULL:
            L.oom = 1
            return
        L.unsup = u
        L.cap_unsup = cap
    L.unsup[k] = idx
    L.unsup[k + 1] = 1
    L.unsup[k + 2] = pt
    L.n_unsup += 1


cdef void emit_frame(Leg *L) noexcept nogil:
    cdef int64_t f = L.f, j, s = L.base % L.ring, upt = 0
    cdef uint8_t *st = L.st + s
    cdef int16_t *pcm = L.pcm + s
    cdef int has_audio = 0, has_empty = 0, has_unsup = 0, kind
    cdef int32_t g
    cdef int16_t *out = out_slot(L)
    cdef const uint8_t *u = <const uint8_t *>memchr(st, ST_UNSUP, f)
    if u != NULL:
        has_unsup = 1
        upt = pcm[u - st]
        for j in range(u - st, f):
            if st[j] == ST_UNSUP:
                pcm[j] = 0  # the slot held the payload type, not a sample
    has_audio = memchr(st, ST_AUDIO, f) != NULL  # libc's memchr scans 32 bytes at a time
    has_empty = memchr(st, ST_EMPTY, f) != NULL
    if has_audio:
        kind = KIND_AUDIO
        if L.conceal:
            memcpy(L.last, pcm, f * sizeof(int16_t))
        if out != NULL:
            memcpy(out, pcm, f * sizeof(int16_t))
        L.have_last = 1
        L.lost_run = 0
        L.stats[S_AUDIO_FRAMES] += 1
        if has_empty:  # part of the frame was lost: it is in a gap too
            L.stats[S_PARTIAL_FRAMES] += 1
            add_gap(L, L.base / f)
    elif has_unsup:
        kind = KIND_UNSUPPORTED
        if out != NULL:
            memset(out, 0, f * sizeof(int16_t))
        L.have_last = 0
        L.lost_run = 0
        L.stats[S_UNSUP_FRAMES] += 1
        add_unsup(L, L.base / f, upt)
    elif has_empty:
        kind = KIND_LOST
        if out != NULL:
            if L.conceal and L.have_last:
                g = CONCEAL_GAIN_Q15[L.lost_run if L.lost_run < 3 else 3]
                for j in range(f):
                    out[j] = <int16_t>((<int32_t>L.last[j] * g) >> 15)
            else:
                memset(out, 0, f * sizeof(int16_t))
        L.lost_run += 1
        L.stats[S_LOST_FRAMES] += 1
        add_gap(L, L.base / f)
    else:
        kind = KIND_SILENCE
        if out != NULL:
            memset(out, 0, f * sizeof(int16_t))
        L.have_last = 0
        L.lost_run = 0
        L.stats[S_SILENCE_FRAMES] += 1
    L.stats[S_FRAMES] += 1
    memset(st, ST_EMPTY, f)
    memset(pcm, 0, f * sizeof(int16_t))
    if out != NULL:
        L.out_kind[L.n_out] = kind
        L.n_out += 1
    L.base += f


cdef inline void advance(Leg *L, int64_t target) noexcept nogil:
    while L.base < target:
        emit_frame(L)


cdef void cover_silent(Leg *L, int64_t lo, int64_t hi, int64_t final) noexcept nogil:
    """Mark [lo, hi) as sender silence where nothing is known yet."""
    cdef int64_t c = lo if lo > L.base else L.base, ce, t, s, k, j
    while c < hi:
        t = floor_frame(L, c)
        advance(L, final if final < t else t)
        ce = c + L.chunk
        if ce > hi:
            ce = hi
        s = c % L.ring
        for k in range(ce - c):
            j = s + k
            if j >= L.ring:
                j -= L.ring
            if L.st[j] == ST_EMPTY:
                L.st[j] = ST_SILENT
        c = ce


cdef inline void decode_into(int16_t *dst, const uint8_t *src, int64_t n,
                             const int16_t *table) noexcept nogil:
    """G.711 table decode; local pointers so the compiler can unroll (no aliasing through L)."""
    cdef int64_t k
    for k in range(n):
        dst[k] = table[src[k]]


cdef void write_audio(Leg *L, int64_t pos, int64_t end, const uint8_t *payload,
                      const int16_t *table, int64_t final, int fresh) noexcept nogil:
    """Decode the span into the ring (first writer wins; ``fresh``: nothing there yet)."""
    cdef int64_t c = pos if pos > L.base else L.base, ce, t, s, k, j
    cdef const uint8_t *src
    while c < end:
        t = floor_frame(L, c)
        advance(L, final if final < t else t)
        ce = c + L.chunk
        if ce > end:
            ce = end
        s = c % L.ring
        src = payload + (c - pos)
        if fresh and s + (ce - c) <= L.ring:
            decode_into(L.pcm + s, src, ce - c, table)
            memset(L.st + s, ST_AUDIO, ce - c)
        elif s + (ce - c) <= L.ring:
            for k in range(ce - c):
                if L.st[s + k] != ST_AUDIO:
                    L.pcm[s + k] = table[src[k]]
                    L.st[s + k] = ST_AUDIO
        else:
            for k in range(ce - c):
                j = s + k
                if j >= L.ring:
                    j -= L.ring
                if L.st[j] != ST_AUDIO:
                    L.pcm[j] = table[src[k]]
                    L.st[j] = ST_AUDIO
        c = ce


cdef void write_unsupported(Leg *L, int64_t pos, int64_t end, int16_t pt,
                            int64_t final) noexcept nogil:
    """Mark the span as audio in an unsupported codec where no audio was written."""
    cdef int64_t c = pos if pos > L.base else L.base, ce, t, k, j
    while c < end:
        t = floor_frame(L, c)
        advance(L, final if final < t else t)
        ce = c + L.chunk
        if ce > end:
            ce = end
        j = c % L.ring
        for k in range(ce - c):
            if L.st[j] != ST_AUDIO:
                L.pcm[j] = pt
                L.st[j] = ST_UNSUP
            j += 1
            if j == L.ring:
                j = 0
        c = ce


cdef int all_audio(Leg *L, int64_t lo, int64_t hi) noexcept nogil:
    cdef int64_t k, j, s
    if hi > L.base + L.ring:
        return 0
    s = lo % L.ring
    for k in range(hi - lo):
        j = s + k
        if j >= L.ring:
            j -= L.ring
        if L.st[j] != ST_AUDIO:
            return 0
    return 1


cdef void start_stream(Leg *L, uint32_t ssrc, int64_t seq, int64_t ts, int64_t a,
                       int64_t span) noexcept nogil:
    cdef int k
    # after the newest span, but never ending more than the lead ahead of arrival
    cdef int64_t pos = L.newest
    if pos > a + L.lead - span:
        pos = a + L.lead - span
    if pos < a - span:
        pos = a - span
    L.has_stream = 1
    L.ssrc = ssrc
    L.gen += 1
    L.max_seq = seq
    L.ref_ts = ts
    L.offset = pos - ts
    for k in range(SEQ_SLOTS):
        L.tag[k] = NO_SEQ
    L.blk_active = 0
    L.settling = 1
    L.anchor_a = a
    L.s_lo = pos
    L.s_floor = L.newest
    L.dref = a - (pos + span)  # 0 unless the anchor had to continue after the newest span
    L.lag = 0
    L.last_a = a


cdef void settle(Leg *L, int64_t delay) noexcept nogil:
    """A packet of a settling stream arrived ``L.dref - delay`` samples early: move the stream earlier."""
    cdef int64_t lo = L.base if L.base > L.s_floor else L.s_floor
    cdef int64_t s = L.dref - delay, x, src, dst, k
    if s > L.s_lo - lo:
        s = L.s_lo - lo  # never onto emitted frames or the previous stream
    if s > 0:
        # everything from s_lo on is this stream's and unemitted, within [base, base + ring)
        src = L.s_lo % L.ring
        dst = (L.s_lo - s) % L.ring
        for x in range(L.newest - L.s_lo):  # ascending: the destination lies before the source
            L.pcm[dst] = L.pcm[src]
            L.st[dst] = L.st[src]
            src += 1
            if src == L.ring:
                src = 0
            dst += 1
            if dst == L.ring:
                dst = 0
        x = L.newest - s if L.newest - s > L.s_lo else L.s_lo
        src = x % L.ring
        while x < L.newest:  # what the stream left behind is not known any more
            L.pcm[src] = 0
            L.st[src] = ST_EMPTY
            src += 1
            if src == L.ring:
                src = 0
            x += 1
        L.offset -= s
        L.newest -= s
        L.s_lo -= s
        for k in range(SEQ_SLOTS):
            if L.tag[k] != NO_SEQ:
                L.sstart[k] -= s
                L.sshift[k] -= s
                L.send[k] -= s
        k = L.n_ev - 1
        while k >= 0 and L.ev[k].gen == L.gen:
            L.ev[k].start -= s
            k -= 1
        L.stats[S_ANCHOR] += 1
    else:
        s = 0
    L.dref = delay + s
    L.blk_active = 0


cdef void drift(Leg *L, int64_t a, int64_t end) noexcept nogil:
    cdef int64_t delay = a - end, step
    if not L.blk_active:
        L.blk_active = 1
        L.blk_start = a
        L.blk_min = delay
        return
    if delay < L.blk_min:
        L.blk_min = delay
    if a - L.blk_start >= L.dblock:
        step = L.blk_min - L.dref
        if step > L.drift_threshold:  # slow sender clock: a forward step first cancels the lag
            L.offset += step
            L.lag -= step if step < L.lag else L.lag
            L.stats[S_DRIFT] += 1
        elif step < -L.drift_threshold:  # fast sender clock: taken back later, see packet()
            L.offset += step
            L.lag -= step
            L.lag_a = a
            L.stats[S_DRIFT] += 1
        L.blk_active = 0


cdef void event(Leg *L, const uint8_t *buf, int64_t po, int64_t ext_ts, int64_t pos,
                int64_t dur) noexcept nogil:
    cdef int64_t code = buf[po], vol = buf[po + 1] & 0x3F, k, cap
    cdef Ev *e
    k = L.n_ev - EVENT_LOOKBACK if L.n_ev > EVENT_LOOKBACK else 0
    while k < L.n_ev:
        e = &L.ev[k]
        if e.gen == L.gen and e.ext_ts == ext_ts and e.code == code:
            if dur > e.dur:
                e.dur = dur
            e.vol = vol
            return
        k += 1
    if L.n_ev == L.cap_ev:
        cap = L.cap_ev * 2 if L.cap_ev else 16
        e = <Ev *>realloc(L.ev, cap * sizeof(Ev))
        if e == NULL:
            L.oom = 1
            return
        L.ev = e
        L.cap_ev = cap
    e = &L.ev[L.n_ev]
    e.gen = L.gen
    e.ext_ts = ext_ts
    e.code = code
    e.start = pos
    e.dur = dur
    e.vol = vol
    L.n_ev += 1


cdef inline int64_t ahead(Leg *L, int kind) noexcept nogil:
    """How far a span of this kind may end ahead of its arrival position."""
    cdef int64_t x
    if L.settling and kind != K_EVENT:
        return L.lead  # an early (bursty) sender is still being settled
    # a settled stream is ahead of arrival by at most -dref, its pending lag, and drift
    # (under a frame); an event reports its duration so far: it ends when it is sent
    x = L.f + L.lag + (-L.dref if L.dref < 0 else 0)
    return x if x < L.lead else L.lead


cdef int consistent(Leg *L, Hdr *h, int64_t a, int64_t span) noexcept nogil:
    """Does this packet confirm the held one (same source, near in sequence and time)?"""
    cdef Held *H = &L.held
    cdef int64_t dseq, dts, delay
    if not H.valid or H.h.ssrc != h.ssrc or H.accepted != L.stats[S_ACCEPTED]:
        return 0  # another source, or the current stream went on after it
    dseq = <int16_t>(<uint16_t>(h.seq - H.h.seq))
    if dseq == 0 or dseq > PROBATION_SEQ or dseq < -PROBATION_SEQ:
        return 0
    dts = <int32_t>(h.ts - H.h.ts)
    delay = (a - H.a) - (dts + span - H.span)
    return -L.lead <= delay <= L.lead


cdef void hold(Leg *L, const uint8_t *buf, Hdr *h, int64_t arrival_us, int64_t a, int kind,
               int64_t span, int new) noexcept nogil:
    """Keep a copy of a packet that would start a new stream, counted as dropped until confirmed."""
    cdef Held *H = &L.held
    cdef uint8_t *b
    if h.plen > L.held_cap:
        b = <uint8_t *>realloc(L.held_buf, h.plen)
        if b == NULL:
            L.oom = 1
            return
        L.held_buf = b
        L.held_cap = h.plen
    memcpy(L.held_buf, buf + h.poff, h.plen)
    H.valid = 1
    H.h = h[0]
    H.h.poff = 0
    H.arrival_us = arrival_us
    H.a = a
    H.span = span
    H.kind = kind
    H.new = new
    H.stat = S_UNCONFIRMED_SSRC if new == NEW_SSRC else S_TS_JUMP
    H.accepted = L.stats[S_ACCEPTED]
    L.stats[H.stat] += 1


cdef void place(Leg *L, const uint8_t *buf, Hdr *h, int64_t arrival_us, int kind, int64_t span,
                int forced) noexcept nogil:
    """Place one parsed packet (``forced``: a confirmed held packet, anchoring its stream)."""
    cdef int anchor = 0, new = forced
    cdef int64_t a, ext_seq = 0, ext_ts = 0, d, delay, pos, end, slot, base, prev_newest, final
    cdef int64_t p, nx, take = 0, k, j
    cdef Hdr hh
    a = arrival_pos(L, arrival_us)
    if forced:
        pass
    elif not L.has_stream:
        anchor = 1
    elif h.ssrc != L.ssrc:
        if L.prev_valid and h.ssrc == L.prev_ssrc and a - L.switch_a <= L.window:
            L.stats[S_STALE] += 1
            return
        new = NEW_SSRC
    else:
        d = <int16_t>(<uint16_t>(h.seq - <uint32_t>(<uint64_t>L.max_seq)))
        ext_seq = L.max_seq + d
        d = <int32_t>(h.ts - <uint32_t>(<uint64_t>L.ref_ts))
        ext_ts = L.ref_ts + d
        delay = a - (ext_ts + L.offset + span)
        if delay > L.reset or delay < -L.reset:
            if ext_seq > L.max_seq or ext_seq < L.max_seq - MAX_MISORDER:
                new = NEW_RESET
            else:
                L.stats[S_INCONSISTENT] += 1
                return
    if new and not forced and a - L.last_a <= L.lead:
        # the current stream is live: a new stream needs a second packet to confirm it
        if kind == K_EVENT:  # an event never starts a stream while one is live
            L.stats[S_UNCONFIRMED_SSRC if new == NEW_SSRC else S_EVENT_SPAN] += 1
            return
        if consistent(L, h, a, span):
            L.held.valid = 0
            L.stats[L.held.stat] -= 1
            hh = L.held.h
            place(L, L.held_buf, &hh, L.held.arrival_us, L.held.kind, L.held.span, L.held.new)
            place(L, buf, h, arrival_us, kind, span, 0)
            return
        hold(L, buf, h, arrival_us, a, kind, span, new)
        return
    if new == NEW_SSRC:
        L.prev_ssrc = L.ssrc
        L.prev_valid = 1
        L.switch_a = a
        L.stats[S_SSRC_CHANGES] += 1
        anchor = 1
    elif new == NEW_RESET:
        L.stats[S_RESETS] += 1
        anchor = 1
    if anchor:
        ext_seq = h.seq
        ext_ts = h.ts
        start_stream(L, h.ssrc, h.seq, h.ts, a, span)
    slot = <int64_t>(<uint64_t>ext_seq & (SEQ_SLOTS - 1))
    if L.tag[slot] == ext_seq:
        L.stats[S_DUP] += 1
        return
    if L.settling and not anchor and (a - L.anchor_a > L.window or L.base > L.s_lo):
        L.settling = 0
    if not anchor and ext_ts + L.offset + L.lag + span - a > ahead(L, kind):
        # ends further ahead of its arrival than its sender can be: a wild timestamp
        L.stats[S_EVENT_SPAN if kind == K_EVENT else S_TS_JUMP] += 1
        return
    if L.settling and not anchor:
        delay = a - (ext_ts + L.offset + span)
        if delay < L.dref:
            settle(L, delay)
    pos = ext_ts + L.offset + L.lag
    base = L.base
    p = <int64_t>(<uint64_t>(ext_seq - 1) & (SEQ_SLOTS - 1))
    nx = <int64_t>(<uint64_t>(ext_seq + 1) & (SEQ_SLOTS - 1))
    if ext_seq < L.max_seq and not anchor:
        # reordered: placed as its neighbours were, whatever drift did since
        if L.tag[nx] == ext_seq + 1:
            pos = ext_ts + L.sshift[nx]
        elif L.tag[p] == ext_seq - 1:
            pos = ext_ts + L.sshift[p]
    elif L.lag and ext_seq == L.max_seq + 1 and L.tag[p] == ext_seq - 1:
        # take back some lag: from sender silence before the packet, or (no silence came
        # within DRIFT_WAIT_MS of the step) one sample a frame from audio
        if pos > L.send[p]:
            take = pos - L.send[p]
        elif pos == L.send[p] and kind == K_AUDIO and a - L.lag_a >= L.lag_wait:
            take = span // L.f if span >= 2 * L.f else 1
            if take > span - 1:
                take = span - 1  # never the whole packet
        if take > L.lag:
            take = L.lag
        if take > pos - base:
            take = pos - base if pos > base else 0
        pos -= take
    end = pos + span
    if end - a > ahead(L, kind):
        L.stats[S_EVENT_SPAN if kind == K_EVENT else S_TS_JUMP] += 1
        return
    if (end <= base) if span else (pos < base):
        L.stats[S_LATE] += 1
        return
    # spans at or beyond the newest end cannot hold audio yet (fast path for in-order packets)
    if kind == K_AUDIO and pos < L.newest and all_audio(L, pos if pos > base else base, end):
        L.stats[S_OVERLAP] += 1
        return
    L.stats[S_ACCEPTED] += 1
    L.last_a = a
    if take:
        L.lag -= take
        k = pos % L.ring
        for j in range(take):  # audio the packet cannot write there any more
            L.stats[S_DRIFT_DROPPED] += L.st[k] == ST_AUDIO
            k += 1
            if k == L.ring:
                k = 0
    if pos < base:
        L.stats[S_LATE_PARTIAL] += 1
    if h.marker:
        L.stats[S_MARKER] += 1
    if kind == K_AUDIO:
        L.stats[S_AUDIO] += 1
        if L.last_pt >= 0 and h.pt != L.last_pt:
            L.stats[S_PT_CHANGES] += 1
        L.last_pt = h.pt
    elif kind == K_CN:
        L.stats[S_CN] += 1
    elif kind == K_EVENT:
        L.stats[S_EVENT] += 1
    else:
        L.stats[S_UNSUP_PACKETS] += 1
        L.unsup_pt[h.pt] = 1
    if ext_seq > L.max_seq:
        L.max_seq = ext_seq
        L.ref_ts = ext_ts
    L.tag[slot] = ext_seq
    if pos < L.s_lo:
        L.s_lo = pos
    L.sstart[slot] = pos
    L.send[slot] = end
    L.sshift[slot] = pos - ext_ts
    prev_newest = L.newest
    if end > L.newest:
        L.newest = end
    final = floor_frame(L, L.newest - L.window)
    if anchor:
        cover_silent(L, prev_newest, pos, final)
    elif L.tag[p] == ext_seq - 1 and L.send[p] < pos:
        cover_silent(L, L.send[p], pos, final)
    if kind == K_AUDIO:
        write_audio(L, pos, end, buf + h.poff, DECODER[h.pt], final, pos >= prev_newest)
    elif kind == K_EVENT:
        cover_silent(L, pos, end, final)
        event(L, buf, h.poff, ext_ts, pos, span)
    elif kind == K_UNSUPPORTED:
        write_unsupported(L, pos, end, <int16_t>h.pt, final)
    if L.tag[nx] == ext_seq + 1 and L.sstart[nx] > end:
        cover_silent(L, end, L.sstart[nx], final)
    advance(L, final)
    drift(L, a, ext_ts + L.offset + span)  # the delay against the RTP mapping, lag aside


cdef void packet(Leg *L, const uint8_t *buf, int64_t off, int64_t n, int64_t arrival_us) noexcept nogil:
    cdef Hdr h
    cdef int r, kind
    cdef int64_t span
    L.stats[S_PACKETS] += 1
    L.stats[S_BYTES] += n
    r = parse_one(buf, off, n, &h)
    if r:
        L.stats[S_MALFORMED] += 1
        L.stats[S_MALFORMED + r] += 1
        return
    if DECODER[h.pt] != NULL:
        kind = K_AUDIO
        span = h.plen
    elif h.pt == PT_CN:
        kind = K_CN
        span = 0
    elif L.evpt[h.pt]:
        if h.plen < 4:
            L.stats[S_MALFORMED] += 1
            L.stats[S_MAL6] += 1
            return
        kind = K_EVENT
        span = (<int64_t>buf[h.poff + 2] << 8) | buf[h.poff + 3]
    else:
        L.stats[S_UNSUPPORTED] += 1
        kind = K_UNSUPPORTED
        if UNSUP_NUM[h.pt]:
            span = h.plen * UNSUP_NUM[h.pt] // UNSUP_DEN[h.pt]
            if span < 1:
                span = 1
            if span > 0xFFFF:
                span = 0xFFFF
        else:
            span = L.f
    place(L, buf, &h, arrival_us, kind, span, 0)


def parse(data, offsets, lengths):
    """RFC 3550 fixed header, CSRC list, extension and padding of every packet (vectorised)."""
    buf, off, ln, _ = check_batch(data, offsets, lengths)
    cdef Py_ssize_t i, n = off.shape[0]
    out = ParsedPackets(n)
    cdef const uint8_t[::1] b = buf
    cdef const uint8_t *bp = &b[0] if b.shape[0] else NULL
    cdef const int64_t[::1] o = off
    cdef const int32_t[::1] l = ln
    cdef uint8_t[::1] valid = out.valid.view(np.uint8)
    cdef uint8_t[::1] reason = out.reason
    cdef uint8_t[::1] marker = out.marker.view(np.uint8)
    cdef uint8_t[::1] pt = out.pt
    cdef uint16_t[::1] seq = out.seq
    cdef uint32_t[::1] ts = out.ts
    cdef uint32_t[::1] ssrc = out.ssrc
    cdef int64_t[::1] poff = out.payload_offset
    cdef int32_t[::1] plen = out.payload_length
    cdef Hdr h
    cdef int r
    with nogil:
        for i in range(n):
            r = parse_one(bp, o[i], l[i], &h)
            valid[i] = r == 0
            reason[i] = r
            marker[i] = h.marker
            pt[i] = h.pt
            seq[i] = h.seq
            ts[i] = h.ts
            ssrc[i] = h.ssrc
            poff[i] = h.poff
            plen[i] = h.plen
    return out


def check_datagrams(const uint8_t[::1] data, const int32_t[::1] lengths,
                    const uint8_t[::1] rules, int min_event_payload, int max_length,
                    const int32_t[::1] rows=None):
    """The sidecar's check of received datagrams (back to back in ``data``) in one
    pass: ``(ok, ssrc, pt)``. A datagram is ok when ``parse`` finds it well formed
    (the same ``parse_one``), its length is 1 to ``max_length``, and by
    ``rules[second byte]`` (256 entries: 0 pass, 1 refuse, 2 an RFC 4733 event that
    needs ``min_event_payload`` payload bytes). ``ssrc`` and ``pt`` are each
    datagram's header fields (0 when too short to have them).

    With ``rows`` (one int32 per datagram), ``rules`` holds several tables of 256
    entries back to back and datagram ``i`` is checked by table ``rows[i]`` (the
    sidecar checks many legs, each with its own telephone-event types, in one
    call)."""
    cdef Py_ssize_t i, n = lengths.shape[0]
    cdef Py_ssize_t tables = rules.shape[0] // 256
    if rows is None:
        if rules.shape[0] != 256:
            raise ValueError("rules needs 256 entries (one per second byte)")
    else:
        if rules.shape[0] != tables * 256 or tables == 0:
            raise ValueError("rules needs 256 entries per table")
        if rows.shape[0] != n:
            raise ValueError("rows needs one table number per datagram")
        for i in range(n):
            if not 0 <= rows[i] < tables:
                raise ValueError(f"rows[{i}] = {rows[i]}: there are {tables} tables")
    cdef bint has_rows = rows is not None
    ok = np.zeros(n, dtype=np.bool_)
    ssrc = np.zeros(n, dtype=np.uint32)
    pt = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] okv = ok.view(np.uint8)
    cdef uint32_t[::1] sv = ssrc
    cdef uint8_t[::1] pv = pt
    cdef const uint8_t *bp = &data[0] if data.shape[0] else NULL
    cdef int64_t off = 0, total = data.shape[0]
    cdef int64_t ln
    cdef int rule
    cdef bint bad = False
    cdef Hdr h
    with nogil:
        for i in range(n):
            ln = lengths[i]
            if ln < 0 or off + ln > total:
                bad = True
                break
            if parse_one(bp, off, ln, &h) == 0 and 1 <= ln <= max_length:
                rule = rules[(rows[i] << 8 if has_rows else 0) | (h.marker << 7) | h.pt]
                okv[i] = rule == 0 or (rule == 2 and h.plen >= min_event_payload)
            sv[i] = h.ssrc
            pv[i] = h.pt
            off += ln
    if bad or off != total:
        raise ValueError("the lengths do not add up to the data")
    return ok, ssrc, pt


cdef inline bint _is_vector(object a, int typenum):
    """A C-contiguous 1-D numpy array of exactly this dtype (readable in place)."""
    return (cnp.PyArray_Check(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef class JitterBuffer:
    """One leg: RTP packets in, 20 ms frames on the call timeline out (see the module docstring)."""

    # attributes (L, closed): ext/callvault/_rtp.pxd

    def __cinit__(self, *, call_start_us, window_ms=300, fill="silence",
                  event_payload_types=(101,), clock_rate=SAMPLE_RATE):
        check_options(window_ms, fill, event_payload_types, clock_rate)
        cdef Leg *L = <Leg *>malloc(sizeof(Leg))
        if L == NULL:
            raise MemoryError()
        memset(L, 0, sizeof(Leg))
        self.L = L
        L.start_us = call_start_us
        L.clock = clock_rate
        L.f = clock_rate // FRAMES_PER_SECOND
        L.window = window_ms * clock_rate // 1000
        L.conceal = fill == "conceal"
        for p in event_payload_types:
            L.evpt[p] = 1
        L.chunk = CHUNK_FRAMES * L.f
        L.ring = L.f * (-(-L.window // L.f) + CHUNK_FRAMES + 2)
        L.reset = RESET_SECONDS * clock_rate
        L.lead = L.window if L.window > L.f else L.f
        L.dblock = DRIFT_BLOCK_SECONDS * clock_rate
        L.drift_threshold = L.f // DRIFT_THRESHOLD_DIV
        L.lag_wait = DRIFT_WAIT_MS * clock_rate // 1000
        L.last_pt = -1
        L.pcm = <int16_t *>malloc(L.ring * sizeof(int16_t))
        L.st = <uint8_t *>malloc(L.ring)
        L.last = <int16_t *>malloc(L.f * sizeof(int16_t))
        if L.pcm == NULL or L.st == NULL or L.last == NULL:
            raise MemoryError()
        memset(L.pcm, 0, L.ring * sizeof(int16_t))
        memset(L.st, 0, L.ring)
        memset(L.last, 0, L.f * sizeof(int16_t))
        self.closed = False

    def __dealloc__(self):
        cdef Leg *L = self.L
        if L != NULL:
            free(L.pcm)
            free(L.st)
            free(L.last)
            free(L.gaps)
            free(L.unsup)
            free(L.held_buf)
            free(L.ev)
            free(L.out_pcm)
            free(L.out_kind)
            free(L)
            self.L = NULL

    cdef object take(self, int64_t first):
        cdef Leg *L = self.L
        cdef int64_t n = L.n_out
        L.n_out = 0
        if L.oom:
            raise MemoryError("jitter buffer could not grow its output buffers")
        pcm = np.empty((n, L.f), dtype=np.int16)
        kind = np.empty(n, dtype=np.uint8)
        if n:
            memcpy(cnp.PyArray_DATA(pcm), L.out_pcm, n * L.f * sizeof(int16_t))
            memcpy(cnp.PyArray_DATA(kind), L.out_kind, n)
        return Frames(np.arange(first, first + n, dtype=np.int64), pcm, kind)

    cdef int c_push(self, const uint8_t *bp, Py_ssize_t blen, const int64_t *o,
                    const int32_t *l, const int64_t *t, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        cdef int64_t first = self.L.base // self.L.f
        for i in range(n):
            if o[i] < 0 or l[i] < 0 or o[i] + l[i] > blen:
                return -1
        for i in range(n):
            packet(self.L, bp, o[i], l[i], t[i])
        return -2 if self.L.oom else 0

    cdef int64_t c_output(self, const int16_t **pcm) noexcept nogil:
        pcm[0] = self.L.out_pcm
        return self.L.n_out

    cdef int64_t c_first_frame(self) noexcept nogil:
        return self.L.base // self.L.f - self.L.n_out

    cdef void c_clear_output(self) noexcept nogil:
        self.L.n_out = 0

    def push(self, data, offsets, lengths, arrival_us):
        """Feed one batch; returns the frames that became final with it."""
        if self.closed:
            raise RuntimeError("this jitter buffer was flushed; it accepts no more packets")
        if arrival_us is None:
            raise ValueError("arrival_us is required: one arrival time per packet")
        cdef const uint8_t *bp
        cdef const int64_t *o
        cdef const int32_t *l
        cdef const int64_t *t
        cdef Py_ssize_t i, n, blen
        cdef object keep = None
        cdef bint bad
        if (type(data) is bytes and _is_vector(offsets, cnp.NPY_INT64)
                and _is_vector(lengths, cnp.NPY_INT32) and _is_vector(arrival_us, cnp.NPY_INT64)):
            # fast path: the types ingest makes, read in place (no copy, no memoryview)
            bp = <const uint8_t *>PyBytes_AS_STRING(data)
            blen = PyBytes_GET_SIZE(data)
            o = <const int64_t *>cnp.PyArray_DATA(offsets)
            l = <const int32_t *>cnp.PyArray_DATA(lengths)
            t = <const int64_t *>cnp.PyArray_DATA(arrival_us)
            n = cnp.PyArray_SIZE(offsets)
            bad = cnp.PyArray_SIZE(lengths) != n or cnp.PyArray_SIZE(arrival_us) != n
        else:
            keep = check_batch(data, offsets, lengths, arrival_us, bounds=False)
            bp = <const uint8_t *>PyBytes_AS_STRING(keep[0])
            blen = PyBytes_GET_SIZE(keep[0])
            o = <const int64_t *>cnp.PyArray_DATA(keep[1])
            l = <const int32_t *>cnp.PyArray_DATA(keep[2])
            t = <const int64_t *>cnp.PyArray_DATA(keep[3])
            n = cnp.PyArray_SIZE(keep[1])
            bad = False
        cdef Leg *L = self.L
        cdef int64_t first = L.base // L.f
        if not bad:
            with nogil:
                for i in range(n):
                    if o[i] < 0 or l[i] < 0 or o[i] + l[i] > blen:
                        bad = True
                        break
        if bad:
            check_batch(data, offsets, lengths, arrival_us)  # raises, saying what is wrong
            raise AssertionError("unreachable: batch check disagreed")
        with nogil:
            for i in range(n):
                packet(L, bp, o[i], l[i], t[i])
        return self.take(first)

    def flush(self, end_us=None):
        """Emit everything held; with end_us, fill up to the frame containing it. Closes the leg."""
        if self.closed:
            raise RuntimeError("this jitter buffer was already flushed")
        self.closed = True
        cdef Leg *L = self.L
        cdef int64_t first = L.base // L.f, target = L.newest, end, last
        if end_us is not None:
            end = arrival_pos(L, end_us)
            if end > target:
                target = end
        # after the last packet the sender is silent, to the end of the last frame
        last = -fdiv(-target, L.f) * L.f
        with nogil:
            if last > L.newest:
                cover_silent(L, L.newest, last, last)
            advance(L, last)
        return self.take(first)

    @property
    def stats(self):
        cdef Leg *L = self.L
        return {k: int(L.stats[i]) for i, k in enumerate(STAT_KEYS)}

    def stat(self, key):
        """One counter of ``stats`` (without building the whole dict: ingest reads
        one per batch)."""
        return int(self.L.stats[_STAT_INDEX[key]])

    @property
    def gaps(self):
        cdef Leg *L = self.L
        return [(int(L.gaps[2 * i]), int(L.gaps[2 * i + 1])) for i in range(L.n_gaps)]

    @property
    def unsupported(self):
        cdef Leg *L = self.L
        return [(int(L.unsup[3 * i]), int(L.unsup[3 * i + 1]), int(L.unsup[3 * i + 2]))
                for i in range(L.n_unsup)]

    @property
    def unsupported_payload_types(self):
        cdef Leg *L = self.L
        return [p for p in range(128) if L.unsup_pt[p]]

    @property
    def events(self):
        cdef Leg *L = self.L
        cdef Ev e
        out = []
        for i in range(L.n_ev):
            e = L.ev[i]
            out.append(TelephoneEvent(event=e.code, digit=event_digit(e.code),
                                      start_ms=fdiv(e.start * 1000, L.clock),
                                      duration_ms=e.dur * 1000 // L.clock, volume=e.vol))
        return out
