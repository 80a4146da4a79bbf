# C-level interface of callvault._rtp (ext/_rtp.pyx): the jitter buffer's batch
# loop without the GIL, for ext/_leg.pyx. The timeline rules: ext/_rtp.pyx.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t

cdef struct Leg  # one leg's state, defined in ext/_rtp.pyx


cdef class JitterBuffer:
    cdef Leg *L
    cdef bint closed

    cdef object take(self, int64_t first)
    # Place n packets (bp[o[i]:o[i] + l[i]], arrival t[i]); the frames that became
    # final are appended to the output (c_output). -1 (nothing done) when a packet
    # lies outside the blen bytes at bp, -2 when the output could not grow.
    cdef int c_push(self, const uint8_t *bp, Py_ssize_t blen, const int64_t *o,
                    const int32_t *l, const int64_t *t, Py_ssize_t n) noexcept nogil
    # The frames emitted and not yet taken: how many, their samples in *pcm
    # (n x 160, contiguous); the first is frame c_first_frame().
    cdef int64_t c_output(self, const int16_t **pcm) noexcept nogil
    cdef int64_t c_first_frame(self) noexcept nogil
    cdef void c_clear_output(self) noexcept nogil
