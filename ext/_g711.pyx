# cython: language_level=3
"""G.711 mu-law / A-law batch decode and encode (ITU-T G.711).

Batch in, batch out, GIL released. The companding itself is ext/g711.h.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int16_t, uint8_t
from g711 cimport cv_alaw_encode, cv_g711_tables, cv_ulaw_encode

cnp.import_array()

cdef int16_t ULAW[256]
cdef int16_t ALAW[256]
cv_g711_tables(ULAW, ALAW)

cdef enum:
    LAW_PCMU = 0  # RTP static payload type of mu-law (RFC 3551)
    LAW_PCMA = 8  # RTP static payload type of A-law (RFC 3551)

PCMU = LAW_PCMU
PCMA = LAW_PCMA


def decode(const uint8_t[::1] data not None, int law):
    """Decode G.711 bytes to int16 PCM. ``law`` is PCMU (0) or PCMA (8)."""
    cdef Py_ssize_t i, n = data.shape[0]
    cdef const int16_t *table
    if law == LAW_PCMU:
        table = ULAW
    elif law == LAW_PCMA:
        table = ALAW
    else:
        raise ValueError(f"unknown G.711 law {law}: expected 0 (PCMU) or 8 (PCMA)")
    out = np.empty(n, dtype=np.int16)
    cdef int16_t[::1] o = out
    with nogil:
        for i in range(n):
            o[i] = table[data[i]]
    return out


def encode(const int16_t[::1] pcm not None, int law):
    """Encode int16 PCM to G.711 bytes. ``law`` is PCMU (0) or PCMA (8)."""
    cdef Py_ssize_t i, n = pcm.shape[0]
    if law != LAW_PCMU and law != LAW_PCMA:
        raise ValueError(f"unknown G.711 law {law}: expected 0 (PCMU) or 8 (PCMA)")
    out = bytearray(n)
    cdef uint8_t[::1] o = out
    with nogil:
        if law == LAW_PCMU:
            for i in range(n):
                o[i] = cv_ulaw_encode(pcm[i])
        else:
            for i in range(n):
                o[i] = cv_alaw_encode(pcm[i])
    return bytes(out)
