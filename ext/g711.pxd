# cdef extern declarations for ext/g711.h (no logic here).
from libc.stdint cimport int16_t, uint8_t

cdef extern from "g711.h" nogil:
    int16_t cv_ulaw_decode(uint8_t u)
    int16_t cv_alaw_decode(uint8_t a)
    uint8_t cv_ulaw_encode(int16_t pcm)
    uint8_t cv_alaw_encode(int16_t pcm)
    void cv_g711_tables(int16_t *ulaw, int16_t *alaw)
