# cython: language_level=3
"""Per-leg signal processing on 20 ms frames: voice activity, in-band DTMF
(detection and PCI masking), levels. Module ``callvault._dsp``.

Frames are int16 arrays of shape (n, 160): 20 ms at 8 kHz, the frame index
of the first one on the call timeline given where positions matter. Batch in,
batch out; the loops run in C without the GIL; detector state lives in C
between batches, so results never depend on how frames are batched.

Levels
------
dBFS here is RMS relative to 32768: a full-scale square wave is 0 dBFS and
a full-scale sine -3.01 dBFS (not the AES17 convention, which puts the
sine at 0). Digital silence is -inf dBFS (no floor: one LSB over a long
batch is a legitimate -130 dBFS). A sample is clipped when |x| >= 32767,
i.e. x in {32767, -32767, -32768}. dBm0: a full-scale sine is +3.14 dBm0
(ITU-T G.711 A-law; mu-law's +3.17 differs by 0.03 dB), so 0 dBm0 is a sine
of amplitude 32768 * 10**(-3.14/20) = 22 843, RMS -6.15 dBFS.

Voice activity (Vad)
--------------------
Per frame, level L = 10 log10(mean(x^2) / 32768^2) dBFS. Noise floor F =
the minimum of L over the last ``floor_window_ms`` (default 1000 ms, the
current frame included): minimum statistics, so the floor follows a noisy
line up within one window and down at once, and speech, which always has
pauses within a second, does not pull it up. A frame is voice when
L > F + ``threshold_db`` (default 9 dB) and L > ``min_level_dbfs``
(default -55 dBFS, so near-silent lines are never voice). Hangover: after
the last voice frame, ``hangover_ms`` (default 200 ms = 10 frames) more
frames are marked voice, keeping word ends and short pauses. A -45 dBFS
white or pink noise line settles to non-voice within one window (+
hangover) of its start; speech 15 dB above it is voice.

In-band DTMF (DtmfDetector)
---------------------------
Reception limits of ITU-T Q.24 (Multifrequency push-button signal
reception), as summarised in public receiver notes (the Recommendation's
own tables were not at hand; sources: UT Austin EE445S DTMF lab notes
quoting Q.24; spandsp's documented twist defaults; the Multitech DTMF timing
note for the -55 dBm0 "tone off" level):
  frequency deviation  operate <= 1.5 %, non-operate >= 3.5 %
  signal duration      operate >= 40 ms, non-operate <= 23 ms
  signal interruption  <= 10 ms must not split a digit
  pause                >= 40 ms must separate two digits
  twist                normal (high group louder) <= 8 dB,
                       reverse (low group louder) <= 4 dB

Analysis: sub-blocks of N = 80 samples (10 ms), two per frame. Why 80 and
not the classic 102/105/205: (1) blocks align with 20 ms frames, so batch
boundaries, masking and the timeline never cut a block; (2) with a
3-consecutive-block confirmation the Q.24 timing falls out exactly: any tone
of >= 319 samples (39.9 ms) contains 3 whole blocks (operate at 40 ms),
while a tone of < 184 samples (23 ms) cannot make 3 passing blocks (the
middle one whole, the edge ones need >= 70 % tone each: 56 + 80 + 56 = 192
samples); (3) frequency selectivity does not come from a long block but
from probe filters (below), so the short block costs nothing there.

Per block, 24 + 8 Goertzel filters at exact (non-bin) frequencies: the 8 DTMF
frequencies (697, 770, 852, 941; 1209, 1336, 1477, 1633 Hz) and, for each,
two probes at -5 % and +5 %. The block carries digit (row r, column c) when
all of these hold (P = Goertzel power, E = block energy sum(x^2)):
  - r, c are the strongest row and column;
  - level: each tone >= -35 dBm0; our choice, more sensitive than the
    usual -25..-30 dBm0 operate floor and well above the -55 dBm0 "no tone"
    level;
  - twist: Pw_c <= Pw_r * 10^(8/10) and Pw_r <= Pw_c * 10^(4/10).
    Level and twist use 8 more Goertzel filters on the Hamming-windowed
    block (Pw): with a rectangular 80-sample block the other group's tone
    leaks in through the sidelobes and moves the measured twist by up to
    +-2 dB depending on phase; Hamming's -43 dB sidelobes bring that under
    +-0.2 dB. (Detection itself keeps the rectangular block: its narrower
    main lobe separates 697 from 770 Hz.)
  - peak within group: every other row (column) is >= 3 dB below r (c);
  - frequency: P at the nominal frequency exceeds both probes, i.e. the tone
    is nearer the nominal than the +-5 % probes: deviation < 2.5 %, midway
    between Q.24's 1.5 % operate and 3.5 % non-operate limits (holds for
    every DTMF frequency because +-5 % stays within the main lobe, first
    null at 100 Hz);
  - tone to total energy (talk-off guard): 2 (P_r + P_c) / N >= 0.7 E, pure
    DTMF gives 1.0, speech spreads its energy far wider.
Timing (a state machine over block decisions):
  - a digit is confirmed by 3 consecutive blocks with the same digit; it
    starts at the first of them;
  - it continues through blocks with the same digit; up to 2 other blocks
    (an interruption of <= 10 ms touches at most 2 blocks) are bridged;
  - it ends after 3 consecutive blocks without it (any pause >= 40 ms holds
    3 whole blocks) or when another digit is confirmed; its end is the end of
    its last block. start/end are within one block (80 samples) of the tone.
An event is reported by the ``process`` call during which the digit ended
(or by ``flush``).

Masking (PCI): with mask=True, the samples from start - 80 to end + 80 (one
guard block either side, covering tone edges in blocks that did not pass)
are replaced by zeros. Confirmation comes 3 blocks after the start, so the
masked span reaches back at most 4 blocks = 320 samples = 2 frames: the
detector holds back ``delay_frames`` = 2 frames and returns each frame once
no later decision can touch it; ``flush`` returns the held frames.
"""
from typing import NamedTuple

import numpy as np
cimport numpy as cnp
from libc.math cimport INFINITY, M_PI, cos, log10
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset

cnp.import_array()

# The constants (FRAME, BLOCK, NFILT, CONFIRM_BLOCKS, END_MISSES, GUARD, HOLD_FRAMES,
# HOLD_SAMPLES, MAX_WINDOW), the Thresholds struct and the detectors' attributes are
# declared in ext/callvault/_dsp.pxd (ext/_leg.pyx runs the loops below from C).

FRAME_SAMPLES = FRAME
BLOCK_SAMPLES = BLOCK
SAMPLE_RATE = 8000

cdef double FS = 8000.0
cdef double FULL_SCALE = 32768.0
cdef double DBM0_FULL_SCALE_SINE = 3.14    # G.711: a full-scale sine is +3.14 dBm0
cdef double PROBE = 0.05                   # probe offset: decision at 2.5 % deviation
cdef double MIN_TONE_DBM0 = -35.0
cdef double TWIST_NORMAL_DB = 8.0          # high group louder (Q.24)
cdef double TWIST_REVERSE_DB = 4.0         # low group louder (Q.24)
cdef double REL_PEAK_DB = 3.0
cdef double TONE_RATIO = 0.7

DTMF_FREQUENCIES = (697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0)
cdef const char *KEYS = b"123A456B789C*0#D"


class DtmfEvent(NamedTuple):
    """One in-band DTMF digit: samples [start_sample, end_sample) at 8 kHz on
    the call timeline (frame index * 160 + offset)."""
    digit: str
    start_sample: int
    end_sample: int


cdef int analyze_block(const int16_t *x, const Thresholds *t) noexcept nogil:
    """Digit 0..15 (index into KEYS) carried by BLOCK samples, or -1."""
    cdef double s1[NFILT]
    cdef double s2[NFILT]
    cdef double p[NFILT]
    cdef double w1[8]
    cdef double w2[8]
    cdef double pw[8]
    cdef double v, vw, s0, energy = 0.0
    cdef int n, k, r = 0, c = 4
    for k in range(NFILT):
        s1[k] = 0.0
        s2[k] = 0.0
    for k in range(8):
        w1[k] = 0.0
        w2[k] = 0.0
    for n in range(BLOCK):
        v = x[n]
        energy += v * v
        for k in range(NFILT):
            s0 = v + t.coef[k] * s1[k] - s2[k]
            s2[k] = s1[k]
            s1[k] = s0
        vw = v * t.window[n]
        for k in range(8):
            s0 = vw + t.coef[k] * w1[k] - w2[k]
            w2[k] = w1[k]
            w1[k] = s0
    if energy <= 0.0:
        return -1
    for k in range(NFILT):
        p[k] = s1[k] * s1[k] + s2[k] * s2[k] - t.coef[k] * s1[k] * s2[k]
    for k in range(8):
        pw[k] = w1[k] * w1[k] + w2[k] * w2[k] - t.coef[k] * w1[k] * w2[k]
    for k in range(1, 4):
        if p[k] > p[r]:
            r = k
    for k in range(5, 8):
        if p[k] > p[c]:
            c = k
    if pw[r] < t.min_power or pw[c] < t.min_power:
        return -1
    if pw[c] > pw[r] * t.twist_normal or pw[r] > pw[c] * t.twist_reverse:
        return -1
    for k in range(4):
        if k != r and p[k] * t.rel_peak > p[r]:
            return -1
    for k in range(4, 8):
        if k != c and p[k] * t.rel_peak > p[c]:
            return -1
    # nominal must beat its -5 % (k + 8) and +5 % (k + 16) probes
    if p[r] <= p[r + 8] or p[r] <= p[r + 16] or p[c] <= p[c + 8] or p[c] <= p[c + 16]:
        return -1
    if 2.0 * (p[r] + p[c]) / BLOCK < t.ratio * energy:
        return -1
    return r * 4 + (c - 4)


cdef class DtmfDetector:
    """In-band DTMF detector with optional masking; see the module docstring."""

    def __cinit__(self, bint mask=False):
        cdef int k
        self.masking = mask
        for k in range(8):
            f = DTMF_FREQUENCIES[k]
            self.t.coef[k] = 2.0 * cos(2.0 * M_PI * f / FS)
            self.t.coef[k + 8] = 2.0 * cos(2.0 * M_PI * f * (1.0 - PROBE) / FS)
            self.t.coef[k + 16] = 2.0 * cos(2.0 * M_PI * f * (1.0 + PROBE) / FS)
        sum_w = 0.0
        for k in range(BLOCK):
            self.t.window[k] = 0.54 - 0.46 * cos(2.0 * M_PI * k / (BLOCK - 1))
            sum_w += self.t.window[k]
        # a tone of amplitude A gives P = (A sum(w) / 2)^2 through window w
        a_min = FULL_SCALE * 10.0 ** ((MIN_TONE_DBM0 - DBM0_FULL_SCALE_SINE) / 20.0)
        self.t.min_power = (a_min * sum_w / 2.0) ** 2
        self.t.twist_normal = 10.0 ** (TWIST_NORMAL_DB / 10.0)
        self.t.twist_reverse = 10.0 ** (TWIST_REVERSE_DB / 10.0)
        self.t.rel_peak = 10.0 ** (REL_PEAK_DB / 10.0)
        self.t.ratio = TONE_RATIO
        self._reset()

    cdef void _reset(self) noexcept nogil:
        self.started = False
        self.pos = 0
        self.cur = -1
        self.start = 0
        self.last_end = 0
        self.miss = 0
        self.cand = -1
        self.cand_run = 0
        self.cand_start = 0
        self.hold_count = 0
        self.hold_start = 0

    @property
    def mask(self) -> bool:
        return self.masking

    @property
    def delay_frames(self) -> int:
        return HOLD_FRAMES if self.masking else 0

    cdef void _zero(self, int64_t a, int64_t b) noexcept nogil:
        """Zero absolute samples [a, b) that are still held back."""
        cdef int64_t lo = self.hold_start, hi = self.hold_start + self.hold_count * FRAME
        if not self.masking:
            return
        if a < lo:
            a = lo
        if b > hi:
            b = hi
        if b > a:
            memset(&self.hold[a - lo], 0, (b - a) * sizeof(int16_t))

    cdef void _emit(self) noexcept nogil:
        """End the current digit at last_end."""
        if self.ev_n < self.ev_cap:
            self.ev_digit[self.ev_n] = <int8_t>self.cur
            self.ev_start[self.ev_n] = self.start
            self.ev_end[self.ev_n] = self.last_end
            self.ev_n += 1
        self._zero(self.last_end, self.last_end + GUARD)
        self.cur = -1
        self.miss = 0

    cdef void _block(self, int d, int64_t bs, int64_t be) noexcept nogil:
        if d >= 0 and d != self.cur:
            if d == self.cand:
                self.cand_run += 1
            else:
                self.cand = d
                self.cand_run = 1
                self.cand_start = bs
        else:
            self.cand = -1
            self.cand_run = 0
        if self.cur >= 0:
            if d == self.cur:
                self.miss = 0
                self._zero(self.last_end, be)   # bridged interruptions included
                self.last_end = be
            else:
                self.miss += 1
                if self.miss >= END_MISSES or self.cand_run >= CONFIRM_BLOCKS:
                    self._emit()
        if self.cur < 0 and self.cand_run >= CONFIRM_BLOCKS:
            self.cur = self.cand
            self.start = self.cand_start
            self.last_end = be
            self.miss = 0
            self.cand = -1
            self.cand_run = 0
            self._zero(self.start - GUARD, be)

    cdef Py_ssize_t _run(self, const int16_t *pcm, Py_ssize_t n, int16_t *out) noexcept nogil:
        """Analyse n frames at pcm; with masking, write released frames to out.
        Returns the number of frames written."""
        cdef Py_ssize_t i, written = 0
        cdef const int16_t *frame
        cdef int b, d
        for i in range(n):
            frame = pcm + i * FRAME
            if self.masking:
                memcpy(&self.hold[self.hold_count * FRAME], frame, FRAME * sizeof(int16_t))
                if self.hold_count == 0:
                    self.hold_start = self.pos
                self.hold_count += 1
            for b in range(FRAME // BLOCK):
                d = analyze_block(frame + b * BLOCK, &self.t)
                self._block(d, self.pos, self.pos + BLOCK)
                self.pos += BLOCK
            if self.masking and self.hold_count > HOLD_FRAMES:
                memcpy(out + written * FRAME, self.hold, FRAME * sizeof(int16_t))
                written += 1
                memmove(self.hold, &self.hold[FRAME], HOLD_FRAMES * FRAME * sizeof(int16_t))
                self.hold_count -= 1
                self.hold_start += FRAME
        return written

    cdef int _begin(self, long long first_index) except -1:
        if first_index < 0:
            raise ValueError(f"first_index {first_index} is negative")
        if self.started and first_index * FRAME != self.pos:
            raise ValueError(
                f"frames must be contiguous: got frame {first_index}, "
                f"expected {self.pos // FRAME}")
        if not self.started:
            self.started = True
            self.pos = first_index * FRAME
        return 0

    cdef list _take_events(self):
        cdef Py_ssize_t i
        return [DtmfEvent(chr(KEYS[self.ev_digit[i]]), self.ev_start[i], self.ev_end[i])
                for i in range(self.ev_n)]

    cdef void _events_begin(self, Py_ssize_t cap) except *:
        self.ev_cap = cap
        self.ev_n = 0
        self.ev_digit = <int8_t *>malloc(cap * sizeof(int8_t))
        self.ev_start = <int64_t *>malloc(cap * sizeof(int64_t))
        self.ev_end = <int64_t *>malloc(cap * sizeof(int64_t))
        if self.ev_digit == NULL or self.ev_start == NULL or self.ev_end == NULL:
            self._events_end()
            raise MemoryError()

    cdef void _events_end(self) noexcept:
        free(self.ev_digit)
        free(self.ev_start)
        free(self.ev_end)
        self.ev_digit = NULL
        self.ev_start = NULL
        self.ev_end = NULL
        self.ev_cap = 0

    def process(self, pcm, long long first_index):
        """(n, 160) int16 frames starting at frame ``first_index`` ->
        (frames out, events that ended in this batch). See _dsp.pyi."""
        cdef const int16_t[:, ::1] view = _frames(pcm)
        cdef Py_ssize_t n = view.shape[0], n_out = 0, written
        cdef int16_t *o = NULL
        self._begin(first_index)
        if self.masking:
            n_out = max(0, self.hold_count + n - HOLD_FRAMES)
            out = np.empty((n_out, FRAME), dtype=np.int16)
            if n_out:
                o = <int16_t *>cnp.PyArray_DATA(out)
        else:
            out = pcm
        # a digit needs >= CONFIRM_BLOCKS blocks to start, so at most
        # 2n / CONFIRM_BLOCKS + 1 digits can end in this batch
        self._events_begin(2 * n // CONFIRM_BLOCKS + 2)
        try:
            with nogil:
                written = self._run(&view[0, 0] if n else NULL, n, o)
            assert not self.masking or written == n_out
            events = self._take_events()
        finally:
            self._events_end()
        return out, events

    def flush(self):
        """End of stream: held-back frames and the digit still sounding.
        The detector is then reset; the next process() starts a new stream."""
        cdef Py_ssize_t h = self.hold_count
        self._events_begin(1)
        try:
            if self.cur >= 0:
                self._emit()
            events = self._take_events()
        finally:
            self._events_end()
        out = np.empty((h, FRAME), dtype=np.int16)
        if h:
            memcpy(cnp.PyArray_DATA(out), self.hold, h * FRAME * sizeof(int16_t))
        self._reset()
        return out, events


cdef const int16_t[:, ::1] _frames(pcm) except *:
    """Check the frame layout and return a C view."""
    cdef const int16_t[:, ::1] view
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 2 \
            or pcm.shape[1] != FRAME:
        raise ValueError(
            f"expected an int16 array of shape (n, {FRAME}), got "
            f"{getattr(pcm, 'dtype', type(pcm).__name__)} {getattr(pcm, 'shape', '')}")
    if not pcm.flags.c_contiguous:
        raise ValueError("frames must be C-contiguous (np.ascontiguousarray)")
    view = pcm
    return view


cdef class Vad:
    """Energy voice-activity detector with a minimum-statistics noise floor
    and hangover; see the module docstring."""

    def __cinit__(self, double threshold_db=9.0, int hangover_ms=200,
                  int floor_window_ms=1000, double min_level_dbfs=-55.0):
        if not threshold_db > 0.0:
            raise ValueError(f"threshold_db must be > 0, got {threshold_db}")
        if hangover_ms < 0:
            raise ValueError(f"hangover_ms must be >= 0, got {hangover_ms}")
        if not 20 <= floor_window_ms <= MAX_WINDOW * 20:
            raise ValueError(f"floor_window_ms must be in 20..{MAX_WINDOW * 20}, got {floor_window_ms}")
        self.threshold = threshold_db
        self.min_level = min_level_dbfs
        self.hang_frames = (hangover_ms + 19) // 20
        self.window = floor_window_ms // 20
        self.ring = <double *>malloc(self.window * sizeof(double))
        if self.ring == NULL:
            raise MemoryError()
        self.ring_len = 0
        self.ring_pos = 0
        self.hang = 0

    def __dealloc__(self):
        free(self.ring)

    @property
    def hangover_frames(self) -> int:
        return self.hang_frames

    @property
    def noise_floor_dbfs(self) -> float:
        """Current noise-floor estimate (-inf before any frame or on silence)."""
        cdef int k
        cdef double f = INFINITY
        if self.ring_len == 0:
            return -INFINITY
        for k in range(self.ring_len):
            if self.ring[k] < f:
                f = self.ring[k]
        return f

    def process(self, pcm):
        """(n, 160) int16 -> uint8[n], 1 = voice."""
        cdef const int16_t[:, ::1] view = _frames(pcm)
        cdef Py_ssize_t n = view.shape[0]
        out = np.empty(n, dtype=np.uint8)
        cdef uint8_t[::1] o = out
        if n:
            with nogil:
                self._run(&view[0, 0], n, &o[0])
        return out

    cdef void _run(self, const int16_t *pcm, Py_ssize_t n, uint8_t *out) noexcept nogil:
        cdef Py_ssize_t i
        cdef int j, k
        cdef int64_t acc
        cdef double level, floor
        cdef const int16_t *x
        for i in range(n):
            x = pcm + i * FRAME
            acc = 0
            for j in range(FRAME):
                acc += <int64_t>x[j] * x[j]
            level = (10.0 * log10(<double>acc / (FRAME * FULL_SCALE * FULL_SCALE))
                     if acc > 0 else -INFINITY)
            self.ring[self.ring_pos] = level
            self.ring_pos = (self.ring_pos + 1) % self.window
            if self.ring_len < self.window:
                self.ring_len += 1
            floor = INFINITY
            for k in range(self.ring_len):
                if self.ring[k] < floor:
                    floor = self.ring[k]
            if level > self.min_level and level > floor + self.threshold:
                self.hang = self.hang_frames
                out[i] = 1
            elif self.hang > 0:
                self.hang -= 1
                out[i] = 1
            else:
                out[i] = 0


cdef inline void _frame_stats(const int16_t *x, int64_t *acc, int32_t *peak,
                              int64_t *clipped) noexcept nogil:
    """Add one frame's sum of squares, peak |x| and clipped count (|x| >= 32767)."""
    cdef Py_ssize_t j
    cdef int32_t a
    for j in range(FRAME):
        a = x[j]
        acc[0] += <int64_t>a * a
        if a < 0:
            a = -a
        if a > peak[0]:
            peak[0] = a
        if a >= 32767:
            clipped[0] += 1


cdef inline double _dbfs(int64_t acc, Py_ssize_t samples) noexcept nogil:
    if acc <= 0:
        return -INFINITY
    return 10.0 * log10(<double>acc / (<double>samples * FULL_SCALE * FULL_SCALE))


cdef void batch_stats(const int16_t *x, Py_ssize_t n, int64_t *acc, int32_t *peak,
                      int64_t *clipped) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        _frame_stats(x + i * FRAME, acc, peak, clipped)


cdef double dbfs(int64_t acc, Py_ssize_t samples) noexcept nogil:
    return _dbfs(acc, samples)


def levels(pcm):
    """(n, 160) int16 -> (rms dBFS over the batch, peak |x|, clipped count)."""
    cdef const int16_t[:, ::1] view = _frames(pcm)
    cdef Py_ssize_t i, n = view.shape[0]
    cdef int64_t acc = 0, clipped = 0
    cdef int32_t peak = 0
    cdef double rms_db
    with nogil:
        if n:
            batch_stats(&view[0, 0], n, &acc, &peak, &clipped)
        rms_db = _dbfs(acc, n * FRAME)
    return rms_db, int(peak), int(clipped)


def frame_levels(pcm):
    """(n, 160) int16 -> (rms dBFS float32[n], peak |x| int32[n])."""
    cdef const int16_t[:, ::1] view = _frames(pcm)
    cdef Py_ssize_t i, n = view.shape[0]
    rms = np.empty(n, dtype=np.float32)
    peaks = np.empty(n, dtype=np.int32)
    cdef float[::1] r = rms
    cdef int32_t[::1] p = peaks
    cdef int64_t acc, clipped
    cdef int32_t peak
    with nogil:
        for i in range(n):
            acc = 0
            peak = 0
            clipped = 0
            _frame_stats(&view[i, 0], &acc, &peak, &clipped)
            r[i] = <float>_dbfs(acc, FRAME)
            p[i] = peak
    return rms, peaks
