# C-level interface of callvault._dsp (ext/_dsp.pyx): the detectors' state and
# their GIL-free batch loops, for ext/_leg.pyx. The algorithms: ext/_dsp.pyx.
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t

cdef enum:
    FRAME = 160           # samples per 20 ms frame at 8 kHz
    BLOCK = 80            # DTMF analysis sub-block: 10 ms, half a frame
    NFILT = 24            # 8 nominal DTMF frequencies + 2 probes each
    CONFIRM_BLOCKS = 3    # consecutive blocks to confirm a digit (Q.24 40/23 ms)
    END_MISSES = 3        # blocks without the digit that end it (Q.24 pause 40 ms)
    GUARD = 80            # masked samples either side of a digit (one block)
    HOLD_FRAMES = 2       # masking delay: (CONFIRM_BLOCKS + 1) * BLOCK / FRAME
    HOLD_SAMPLES = 480    # (HOLD_FRAMES + 1) * FRAME
    MAX_WINDOW = 3000     # Vad floor window, frames (60 s)


cdef struct Thresholds:
    double coef[NFILT]
    double window[BLOCK]        # Hamming, for the level and twist filters
    double min_power            # on the Hamming-windowed filters
    double twist_normal
    double twist_reverse
    double rel_peak
    double ratio


cdef class DtmfDetector:
    cdef bint masking
    cdef Thresholds t
    # timeline
    cdef bint started
    cdef int64_t pos            # absolute sample position of the next block
    # digit state machine
    cdef int cur                # confirmed digit, -1 if none
    cdef int64_t start          # its first sample
    cdef int64_t last_end       # end of its last matching block
    cdef int miss               # consecutive blocks without it
    cdef int cand               # candidate digit, -1 if none
    cdef int cand_run           # consecutive blocks of the candidate
    cdef int64_t cand_start
    # held-back frames (masking only)
    cdef int16_t hold[HOLD_SAMPLES]
    cdef int hold_count
    cdef int64_t hold_start     # absolute sample position of hold[0]
    # events of the current call (C arrays owned by process/flush)
    cdef int8_t *ev_digit
    cdef int64_t *ev_start
    cdef int64_t *ev_end
    cdef Py_ssize_t ev_n, ev_cap

    cdef void _reset(self) noexcept nogil
    cdef void _zero(self, int64_t a, int64_t b) noexcept nogil
    cdef void _emit(self) noexcept nogil
    cdef void _block(self, int d, int64_t bs, int64_t be) noexcept nogil
    # n frames at pcm; with masking, the released frames go to out: how many
    cdef Py_ssize_t _run(self, const int16_t *pcm, Py_ssize_t n, int16_t *out) noexcept nogil
    # the contiguity check of process (ValueError), and the stream's start
    cdef int _begin(self, long long first_index) except -1
    cdef list _take_events(self)
    cdef void _events_begin(self, Py_ssize_t cap) except *
    cdef void _events_end(self) noexcept


cdef class Vad:
    cdef double threshold
    cdef double min_level
    cdef int hang_frames
    cdef int window
    cdef double *ring           # frame levels (dBFS) of the last `window` frames
    cdef int ring_len, ring_pos
    cdef int hang               # hangover frames left

    # n frames at pcm -> out[i] = 1 for voice
    cdef void _run(self, const int16_t *pcm, Py_ssize_t n, uint8_t *out) noexcept nogil


# n frames at x: add their sum of squares, peak |x| and clipped count (|x| >= 32767)
cdef void batch_stats(const int16_t *x, Py_ssize_t n, int64_t *acc, int32_t *peak,
                      int64_t *clipped) noexcept nogil
# 10 log10(acc / (samples * 32768^2)), -inf for acc <= 0
cdef double dbfs(int64_t acc, Py_ssize_t samples) noexcept nogil
