# C-level interface of callvault._opus (ext/_opus.pyx): the Encoder's libopus
# state and its GIL-free calls, for ext/_leg.pyx.
from libc.stdint cimport int16_t, int32_t

from libopus cimport OpusEncoder


cdef class Encoder:
    cdef OpusEncoder *st
    cdef readonly int sample_rate
    cdef readonly int channels
    cdef readonly int frame_size
    cdef readonly str application

    cdef int _ctl_set(self, int request, int value, str name) except -1
    cdef int32_t _ctl_get(self, int request, str name) except? -1
    cdef object _frames(self, object pcm, bint single)
    # one frame (frame_size x channels samples) into ``out`` (room for max_bytes):
    # the packet's length, or a libopus error code (< 0)
    cdef int c_encode(self, const int16_t *pcm, unsigned char *out,
                      int32_t max_bytes) noexcept nogil
    # OPUS_GET_BITRATE / OPUS_SET_BITRATE: the value, or a libopus error code (< 0)
    cdef int32_t c_bitrate(self) noexcept nogil
    cdef int c_set_bitrate(self, int32_t value) noexcept nogil
    # OPUS_SET_DTX (0 or 1): 0, or a libopus error code (< 0)
    cdef int c_set_dtx(self, int value) noexcept nogil
