# cython: language_level=3
"""libopus binding: encoder, decoders, multistream packing, Ogg page CRC.

Batch in, batch out: ``Encoder.encode_frames`` takes (n, frame) int16 PCM and
returns every packet concatenated plus an int32 array of lengths, the GIL
released over the whole batch; the decoders and ``pack_multistream`` take the
same (data, lengths) shape. Every libopus call runs ``with nogil:``; one
function, ``check``, turns libopus error codes into ``CodecError``.

Packet framing follows RFC 6716 section 3 (TOC byte, frame count codes 0-3)
and Appendix B (self-delimiting framing), read by one parser, ``parse_framing``,
with self-delimiting as its mode; multistream packets follow RFC 7845
section 5.1.1 / RFC 6716 Appendix B: every stream but the last is
self-delimited. The declarations of libopus are in ext/libopus.pxd.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int16_t, int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

from callvault.errors import CodecError

from libopus cimport *

# Largest Opus packet we ask libopus for: RFC 6716 3.4 caps a frame at 1275
# bytes and a packet at 120 ms; 4000 is libopus' own recommended ceiling.
DEF MAX_PACKET = 4000
# 120 ms at 48 kHz: the longest packet duration (RFC 6716 3.2.5).
DEF MAX_SAMPLES_48K = 5760
# RFC 6716 3.2.1: a frame is at most 1275 bytes.
DEF MAX_FRAME_BYTES = 1275

cnp.import_array()

_APPLICATIONS = {
    "voip": OPUS_APPLICATION_VOIP,
    "audio": OPUS_APPLICATION_AUDIO,
    "restricted_lowdelay": OPUS_APPLICATION_RESTRICTED_LOWDELAY,
}
_RATES = (8000, 12000, 16000, 24000, 48000)


def version() -> str:
    """The libopus version string, e.g. 'libopus 1.3.1'."""
    return opus_get_version_string().decode()


cdef int check(int rc, str fn) except -1:
    """Raise CodecError if ``rc`` is a libopus error code (< 0), else return rc."""
    if rc < 0:
        raise CodecError(fn, rc, opus_strerror(rc).decode())
    return rc


# --------------------------------------------------------------------------
# Encoder


cdef class Encoder:
    """One libopus encoder (state lives in C; one instance per leg, one thread at a time).

    Default complexity 8: on 8 kHz speech at 12 kb/s (SILK narrowband) it
    scores PESQ-NB 3.97 like 10 (libopus uses the same SILK search settings
    from 8 up) where 5 scores 3.67, at about 130x real time per core
    (tests/ext/test_opus.py::test_clean_speech_pesq_at_12kbps, docs/opus-silence.md).
    """

    # attributes: ext/callvault/_opus.pxd

    def __cinit__(self):
        self.st = NULL

    def __init__(self, *, int sample_rate=8000, int channels=1, str application="voip",
                 int bitrate=12000, int complexity=8, bint dtx=True, bint vbr=True,
                 bint inband_fec=False, int packet_loss_perc=0, int frame_ms=20):
        cdef int err = OPUS_OK
        cdef int app
        if sample_rate not in _RATES:
            raise ValueError(f"sample_rate {sample_rate} not supported by Opus: use one of {_RATES}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        if application not in _APPLICATIONS:
            raise ValueError(f"application {application!r} unknown: use one of {sorted(_APPLICATIONS)}")
        if frame_ms not in (10, 20, 40, 60):
            raise ValueError(f"frame_ms {frame_ms} not supported: use 10, 20, 40 or 60")
        if not 500 <= bitrate <= 512000:
            raise ValueError(f"bitrate {bitrate} b/s out of Opus' range 500..512000")
        if not 0 <= complexity <= 10:
            raise ValueError(f"complexity {complexity} out of range 0..10")
        if not 0 <= packet_loss_perc <= 100:
            raise ValueError(f"packet_loss_perc {packet_loss_perc} out of range 0..100")
        app = _APPLICATIONS[application]
        with nogil:
            self.st = opus_encoder_create(sample_rate, channels, app, &err)
        check(err, "opus_encoder_create")
        if self.st == NULL:
            raise MemoryError("opus_encoder_create returned NULL")
        self.sample_rate = sample_rate
        self.channels = channels
        self.application = application
        self.frame_size = sample_rate * frame_ms // 1000
        self._ctl_set(OPUS_SET_BITRATE_REQUEST, bitrate, "OPUS_SET_BITRATE")
        self._ctl_set(OPUS_SET_COMPLEXITY_REQUEST, complexity, "OPUS_SET_COMPLEXITY")
        self._ctl_set(OPUS_SET_DTX_REQUEST, dtx, "OPUS_SET_DTX")
        self._ctl_set(OPUS_SET_VBR_REQUEST, vbr, "OPUS_SET_VBR")
        self._ctl_set(OPUS_SET_INBAND_FEC_REQUEST, inband_fec, "OPUS_SET_INBAND_FEC")
        self._ctl_set(OPUS_SET_PACKET_LOSS_PERC_REQUEST, packet_loss_perc,
                      "OPUS_SET_PACKET_LOSS_PERC")
        if application == "voip":
            self._ctl_set(OPUS_SET_SIGNAL_REQUEST, OPUS_SIGNAL_VOICE, "OPUS_SET_SIGNAL")

    def __dealloc__(self):
        if self.st != NULL:
            opus_encoder_destroy(self.st)
            self.st = NULL

    cdef int _ctl_set(self, int request, int value, str name) except -1:
        cdef int rc
        with nogil:
            rc = opus_encoder_ctl(self.st, request, <int32_t>value)
        return check(rc, f"opus_encoder_ctl({name}={value})")

    cdef int32_t _ctl_get(self, int request, str name) except? -1:
        cdef int rc
        cdef int32_t value = 0
        with nogil:
            rc = opus_encoder_ctl(self.st, request, &value)
        check(rc, f"opus_encoder_ctl({name})")
        return value

    cdef int c_encode(self, const int16_t *pcm, unsigned char *out,
                      int32_t max_bytes) noexcept nogil:
        return opus_encode(self.st, pcm, self.frame_size, out, max_bytes)

    cdef int32_t c_bitrate(self) noexcept nogil:
        cdef int32_t value = 0
        cdef int rc = opus_encoder_ctl(self.st, OPUS_GET_BITRATE_REQUEST, &value)
        return rc if rc < 0 else value

    cdef int c_set_bitrate(self, int32_t value) noexcept nogil:
        return opus_encoder_ctl(self.st, OPUS_SET_BITRATE_REQUEST, value)

    cdef int c_set_dtx(self, int value) noexcept nogil:
        return opus_encoder_ctl(self.st, OPUS_SET_DTX_REQUEST, value)

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at 48 kHz (the Ogg Opus pre-skip, RFC 7845 4.2)."""
        return self._ctl_get(OPUS_GET_LOOKAHEAD_REQUEST, "OPUS_GET_LOOKAHEAD") * (
            48000 // self.sample_rate)

    @property
    def bitrate(self) -> int:
        return self._ctl_get(OPUS_GET_BITRATE_REQUEST, "OPUS_GET_BITRATE")

    @bitrate.setter
    def bitrate(self, int value) -> None:
        self._ctl_set(OPUS_SET_BITRATE_REQUEST, value, "OPUS_SET_BITRATE")

    @property
    def complexity(self) -> int:
        return self._ctl_get(OPUS_GET_COMPLEXITY_REQUEST, "OPUS_GET_COMPLEXITY")

    @complexity.setter
    def complexity(self, int value) -> None:
        self._ctl_set(OPUS_SET_COMPLEXITY_REQUEST, value, "OPUS_SET_COMPLEXITY")

    @property
    def dtx(self) -> bool:
        return bool(self._ctl_get(OPUS_GET_DTX_REQUEST, "OPUS_GET_DTX"))

    @dtx.setter
    def dtx(self, bint value) -> None:
        self._ctl_set(OPUS_SET_DTX_REQUEST, value, "OPUS_SET_DTX")

    @property
    def in_dtx(self) -> bool:
        """True while the encoder is in DTX (the last packet was a DTX packet)."""
        return bool(self._ctl_get(OPUS_GET_IN_DTX_REQUEST, "OPUS_GET_IN_DTX"))

    @property
    def final_range(self) -> int:
        """Range coder final state of the last packet (RFC 6716 4.1; for bit-exact checks)."""
        return <uint32_t>self._ctl_get(OPUS_GET_FINAL_RANGE_REQUEST, "OPUS_GET_FINAL_RANGE")

    def reset(self) -> None:
        """Reset the encoder state (OPUS_RESET_STATE), keeping its settings."""
        cdef int rc
        with nogil:
            rc = opus_encoder_ctl(self.st, OPUS_RESET_STATE)
        check(rc, "opus_encoder_ctl(OPUS_RESET_STATE)")

    cdef object _frames(self, object pcm, bint single):
        a = np.ascontiguousarray(pcm, dtype=np.int16)
        cdef Py_ssize_t per = self.frame_size * self.channels
        if single:
            if a.size != per:
                raise ValueError(
                    f"encode expects one frame of {self.frame_size} samples x {self.channels} "
                    f"channel(s), got shape {a.shape}")
            return a.reshape(1, per)
        if a.ndim == 0 or a.shape[0] == 0:
            return a.reshape(0, per)
        if a.size != a.shape[0] * per:
            raise ValueError(
                f"encode_frames expects (n, {self.frame_size}) frames "
                f"(x {self.channels} channel(s)), got shape {a.shape}")
        return a.reshape(a.shape[0], per)

    def encode(self, pcm, int max_bytes=MAX_PACKET) -> bytes:
        """Encode one frame (frame_size x channels int16 samples) into one packet.

        ``max_bytes`` caps the packet size (libopus lowers the rate to fit).
        """
        cdef const int16_t[:, ::1] f = self._frames(pcm, True)
        cdef unsigned char buf[MAX_PACKET]
        cdef int32_t n
        if not 1 <= max_bytes <= MAX_PACKET:
            raise ValueError(f"max_bytes {max_bytes} out of range 1..{MAX_PACKET}")
        with nogil:
            n = opus_encode(self.st, &f[0, 0], self.frame_size, buf, max_bytes)
        check(n, "opus_encode")
        return bytes(buf[:n])

    def encode_frames(self, pcm, max_bytes=None):
        """Encode (n, frame_size) frames: (packets concatenated, int32 lengths).

        One packet per frame; the GIL is released over the whole batch.
        ``max_bytes`` (one int, or one per frame) caps each packet's size:
        libopus then codes the frame at the rate that fits (e.g. a few bytes
        of comfort noise for a frame a VAD judged silent).
        """
        cdef const int16_t[:, ::1] f = self._frames(pcm, False)
        cdef Py_ssize_t n = f.shape[0], i, used = 0, cap
        caps_arr = np.full(n, MAX_PACKET, dtype=np.int32)
        if max_bytes is not None:
            caps_arr[:] = max_bytes
            if n and (caps_arr.min() < 1 or caps_arr.max() > MAX_PACKET):
                raise ValueError(f"max_bytes must be within 1..{MAX_PACKET}")
        cdef const int32_t[::1] caps = caps_arr
        lengths = np.empty(n, dtype=np.int32)
        cdef int32_t[::1] lens = lengths
        cdef int32_t rc = 0
        cdef Py_ssize_t bad = -1
        cdef unsigned char *buf
        cdef unsigned char *grown
        if n == 0:
            return b"", lengths
        cap = n * 64 + MAX_PACKET
        buf = <unsigned char *>malloc(cap)
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(n):
                    if cap - used < MAX_PACKET:
                        grown = <unsigned char *>realloc(buf, cap * 2)
                        if grown == NULL:
                            rc = OPUS_ALLOC_FAIL
                            bad = i
                            break
                        buf = grown
                        cap = cap * 2
                    rc = opus_encode(self.st, &f[i, 0], self.frame_size, buf + used, caps[i])
                    if rc < 0:
                        bad = i
                        break
                    lens[i] = rc
                    used += rc
            if bad >= 0:
                check(rc, f"opus_encode (frame {bad})")
            return bytes(buf[:used]), lengths
        finally:
            free(buf)


# --------------------------------------------------------------------------
# Decoders


cdef object _offsets(object lengths, Py_ssize_t total):
    """Validate (data, lengths) and return int64 offsets (n + 1)."""
    lens = np.ascontiguousarray(lengths, dtype=np.int32)
    if lens.ndim != 1:
        raise ValueError("lengths must be a 1-D array")
    if lens.size and lens.min() < 0:
        raise ValueError("lengths must not be negative")
    off = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    cdef long long summed = int(off[lens.size])
    if summed != total:
        raise ValueError(f"lengths add up to {summed} bytes but data has {total}")
    return off


cdef class Decoder:
    """One libopus decoder. ``decode(None)`` conceals a lost packet (libopus PLC)."""

    cdef OpusDecoder *st
    cdef readonly int sample_rate
    cdef readonly int channels

    def __cinit__(self):
        self.st = NULL

    def __init__(self, *, int sample_rate=8000, int channels=1):
        cdef int err = OPUS_OK
        if sample_rate not in _RATES:
            raise ValueError(f"sample_rate {sample_rate} not supported by Opus: use one of {_RATES}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        with nogil:
            self.st = opus_decoder_create(sample_rate, channels, &err)
        check(err, "opus_decoder_create")
        self.sample_rate = sample_rate
        self.channels = channels

    def __dealloc__(self):
        if self.st != NULL:
            opus_decoder_destroy(self.st)
            self.st = NULL

    def reset(self) -> None:
        cdef int rc
        with nogil:
            rc = opus_decoder_ctl(self.st, OPUS_RESET_STATE)
        check(rc, "opus_decoder_ctl(OPUS_RESET_STATE)")

    def decode(self, packet, int frame_size=0):
        """Decode one packet (None or b'' = lost: concealment of ``frame_size``).

        ``frame_size`` defaults to 20 ms for a lost packet and to the largest
        packet (120 ms) otherwise; the result holds what was decoded, shape
        (samples,) for mono and (samples, channels) for stereo.
        """
        out = _decode_one(<void *>self.st, False, self.channels, self.sample_rate, packet,
                          frame_size)
        return out if self.channels == 1 else out.reshape(-1, self.channels)

    def decode_frames(self, data, lengths, int frame_size=0):
        """Decode a batch: (n, frame_size) int16 (x channels). A 0-length packet = lost (PLC).

        Every packet must decode to ``frame_size`` samples (default 20 ms).
        """
        out = _decode_batch(<void *>self.st, False, self.channels, self.sample_rate, data,
                            lengths, frame_size)
        return out if self.channels == 1 else out.reshape(out.shape[0], -1, self.channels)


cdef object _decode_one(void *st, bint multistream, int channels, int sample_rate, packet,
                        int frame_size):
    """Decode one packet (None or b'' = lost: concealment of ``frame_size``) to
    interleaved int16. ``frame_size`` defaults to 20 ms for a loss and to the
    largest packet (120 ms) otherwise; the result holds what was decoded."""
    cdef const unsigned char[::1] p
    cdef const unsigned char *ptr = NULL
    cdef int32_t plen = 0
    cdef int rc
    if packet is not None and len(packet) > 0:
        p = packet
        ptr = &p[0]
        plen = p.shape[0]
    if frame_size <= 0:
        frame_size = sample_rate // 50 if ptr == NULL else MAX_SAMPLES_48K * sample_rate // 48000
    out = np.empty(frame_size * channels, dtype=np.int16)
    cdef int16_t[::1] o = out
    with nogil:
        if multistream:
            rc = opus_multistream_decode(<OpusMSDecoder *>st, ptr, plen, &o[0], frame_size, 0)
        else:
            rc = opus_decode(<OpusDecoder *>st, ptr, plen, &o[0], frame_size, 0)
    check(rc, "opus_multistream_decode" if multistream else "opus_decode")
    return out[: rc * channels]


cdef object _decode_batch(void *st, bint multistream, int channels, int sample_rate, data,
                          lengths, int frame_size):
    """(n, frame_size * channels) int16 from n packets, GIL released over the batch.

    A 0-length packet is a loss (libopus conceals it); every packet must give
    exactly ``frame_size`` samples (default 20 ms)."""
    cdef const unsigned char[::1] d = bytes(data) if not isinstance(data, bytes) else data
    off_arr = _offsets(lengths, d.shape[0])
    cdef const long long[::1] off = off_arr
    cdef Py_ssize_t n = off.shape[0] - 1, i
    if frame_size <= 0:
        frame_size = sample_rate // 50
    out = np.zeros((n, frame_size * channels), dtype=np.int16)
    cdef int16_t[:, ::1] o = out
    cdef int rc = 0
    cdef Py_ssize_t bad = -1
    cdef int32_t plen
    cdef const unsigned char *base = &d[0] if d.shape[0] > 0 else NULL
    cdef const unsigned char *p
    with nogil:
        for i in range(n):
            plen = <int32_t>(off[i + 1] - off[i])
            p = base + off[i] if plen > 0 else NULL
            if multistream:
                rc = opus_multistream_decode(<OpusMSDecoder *>st, p, plen, &o[i, 0], frame_size, 0)
            else:
                rc = opus_decode(<OpusDecoder *>st, p, plen, &o[i, 0], frame_size, 0)
            if rc != frame_size:
                bad = i
                break
    if bad >= 0:
        fn = "opus_multistream_decode" if multistream else "opus_decode"
        check(rc, f"{fn} (packet {bad})")
        raise ValueError(f"packet {bad} decodes to {rc} samples, expected {frame_size}")
    return out


cdef class MultistreamDecoder:
    """libopus multistream decoder (RFC 7845 5.1.1), e.g. 2 uncoupled mono streams."""

    cdef OpusMSDecoder *st
    cdef readonly int sample_rate
    cdef readonly int channels
    cdef readonly int streams
    cdef readonly int coupled

    def __cinit__(self):
        self.st = NULL

    def __init__(self, int sample_rate, int channels, int streams, int coupled, mapping):
        cdef int err = OPUS_OK
        cdef bytes m = bytes(mapping)
        cdef const unsigned char *mp = m
        if sample_rate not in _RATES:
            raise ValueError(f"sample_rate {sample_rate} not supported by Opus: use one of {_RATES}")
        if len(m) != channels:
            raise ValueError(f"mapping has {len(m)} entries for {channels} channels")
        with nogil:
            self.st = opus_multistream_decoder_create(sample_rate, channels, streams, coupled,
                                                      mp, &err)
        check(err, "opus_multistream_decoder_create")
        self.sample_rate = sample_rate
        self.channels = channels
        self.streams = streams
        self.coupled = coupled

    def __dealloc__(self):
        if self.st != NULL:
            opus_multistream_decoder_destroy(self.st)
            self.st = NULL

    def reset(self) -> None:
        cdef int rc
        with nogil:
            rc = opus_multistream_decoder_ctl(self.st, OPUS_RESET_STATE)
        check(rc, "opus_multistream_decoder_ctl(OPUS_RESET_STATE)")

    def decode(self, packet, int frame_size=0):
        """Decode one multistream packet (None = lost) to (samples, channels) int16."""
        out = _decode_one(<void *>self.st, True, self.channels, self.sample_rate, packet,
                          frame_size)
        return out.reshape(-1, self.channels)

    def decode_frames(self, data, lengths, int frame_size=0):
        """Decode a batch of multistream packets: (n, frame_size, channels) int16."""
        out = _decode_batch(<void *>self.st, True, self.channels, self.sample_rate, data,
                            lengths, frame_size)
        return out.reshape(out.shape[0], -1, self.channels)


# --------------------------------------------------------------------------
# Packet framing (RFC 6716 3.2 and Appendix B)


cdef inline int put_len(unsigned char *p, int n) noexcept nogil:
    """Write a frame length in 1 or 2 bytes (RFC 6716 3.2.1); return bytes written."""
    if n < 252:
        p[0] = <unsigned char>n
        return 1
    p[0] = <unsigned char>(252 + (n & 3))
    p[1] = <unsigned char>((n - p[0]) >> 2)
    return 2


cdef inline int get_len(const unsigned char *p, Py_ssize_t avail, int *n) noexcept nogil:
    """Read a frame length (RFC 6716 3.2.1); return bytes read or -1 if truncated."""
    if avail < 1:
        return -1
    if p[0] < 252:
        n[0] = p[0]
        return 1
    if avail < 2:
        return -1
    n[0] = 4 * p[1] + p[0]
    return 2


cdef struct Framing:
    # The layout of one Opus packet, as parse_framing reads it.
    int code          # TOC frame count code, 0-3 (RFC 6716 3.2)
    int count         # frames in the packet
    bint vbr          # frame lengths coded one by one (code 2, code 3 VBR)
    Py_ssize_t lenpos  # where the self-delimiting length sits (end of the plain header)
    Py_ssize_t pos     # first frame byte
    Py_ssize_t frames  # bytes of all frames
    Py_ssize_t padding  # code 3 padding bytes after the frames
    int last          # the length self-delimiting framing codes: the last frame's (VBR)
                      # or every frame's (CBR)
    int sizes[64]     # each frame's length (count <= 63)


cdef int parse_framing(const unsigned char *src, Py_ssize_t avail, bint self_delimiting,
                       Framing *f) noexcept nogil:
    """Read the framing of one Opus packet: plain (RFC 6716 3.2) or, with
    ``self_delimiting``, self-delimited (RFC 6716 Appendix B).

    The two framings differ in one length field only: a self-delimited packet
    codes after the plain header (TOC, frame count, padding, VBR lengths) the
    length plain framing leaves implicit, that of the last frame (VBR) or of
    every frame (CBR), and may be followed by other data; a plain packet spans
    ``avail``. Fills ``f`` and returns 0, or OPUS_INVALID_PACKET.
    """
    cdef int r, n, i
    cdef Py_ssize_t pos = 1, coded = 0, rest, last
    cdef unsigned char b
    if avail < 1:
        return OPUS_INVALID_PACKET
    f.code = src[0] & 3
    f.count = 1
    f.vbr = False
    f.padding = 0
    if f.code == 1:  # two frames of equal size
        f.count = 2
    elif f.code == 2:  # two frames: N1 coded, N2 implicit
        f.count = 2
        f.vbr = True
    elif f.code == 3:  # frame count byte, optional padding, CBR or VBR
        if avail < 2:
            return OPUS_INVALID_PACKET
        f.count = src[1] & 0x3F
        if f.count == 0:
            return OPUS_INVALID_PACKET
        f.vbr = (src[1] & 0x80) != 0
        pos = 2
        if src[1] & 0x40:
            while True:
                if pos >= avail:
                    return OPUS_INVALID_PACKET
                b = src[pos]
                pos += 1
                f.padding += 254 if b == 255 else b
                if b != 255:
                    break
    if f.vbr:  # every length but the last coded
        for i in range(f.count - 1):
            r = get_len(src + pos, avail - pos, &n)
            if r < 0:
                return OPUS_INVALID_PACKET
            pos += r
            f.sizes[i] = n
            coded += n
    f.lenpos = pos
    if self_delimiting:  # the length plain framing leaves implicit, coded
        r = get_len(src + pos, avail - pos, &n)
        if r < 0:
            return OPUS_INVALID_PACKET
        pos += r
        last = n
        f.frames = coded + last if f.vbr else f.count * last
        if pos + f.frames + f.padding > avail:
            return OPUS_INVALID_PACKET
    else:  # implicit: what the packet has left after the header and padding
        rest = avail - pos - f.padding
        if f.vbr:
            last = rest - coded
            if last < 0:
                return OPUS_INVALID_PACKET
        else:
            if rest < 0 or rest % f.count:
                return OPUS_INVALID_PACKET
            last = rest // f.count
        f.frames = rest
    if last > MAX_FRAME_BYTES:
        return OPUS_INVALID_PACKET
    f.pos = pos
    f.last = <int>last
    if f.vbr:
        f.sizes[f.count - 1] = f.last
    else:
        for i in range(f.count):
            f.sizes[i] = f.last
    return 0


cdef Py_ssize_t to_self_delimited(const unsigned char *src, Py_ssize_t slen,
                                  unsigned char *dst) noexcept nogil:
    """Rewrite a plain Opus packet in self-delimiting framing (RFC 6716 Appendix B).

    The length plain framing leaves implicit is inserted after the header.
    ``dst`` needs ``slen + 2`` bytes. Returns the new length, or
    OPUS_INVALID_PACKET.
    """
    cdef Framing f
    cdef Py_ssize_t k
    if parse_framing(src, slen, False, &f) < 0:
        return OPUS_INVALID_PACKET
    memcpy(dst, src, f.lenpos)
    k = f.lenpos + put_len(dst + f.lenpos, f.last)
    memcpy(dst + k, src + f.lenpos, slen - f.lenpos)
    return k + slen - f.lenpos


cdef Py_ssize_t from_self_delimited(const unsigned char *src, Py_ssize_t avail,
                                    unsigned char *dst, Py_ssize_t *used) noexcept nogil:
    """Read one self-delimited packet from ``src`` and write it in plain framing.

    ``used`` receives the bytes consumed. Returns the plain packet length or
    OPUS_INVALID_PACKET. ``dst`` needs ``avail`` bytes.
    """
    cdef Framing f
    cdef Py_ssize_t body
    if parse_framing(src, avail, True, &f) < 0:
        return OPUS_INVALID_PACKET
    body = f.frames + f.padding
    memcpy(dst, src, f.lenpos)
    memcpy(dst + f.lenpos, src + f.pos, body)
    used[0] = f.pos + body
    return f.lenpos + body


def parse_packet(packet, bint self_delimited=False) -> tuple:
    """The frames of one Opus packet: (frames, padding bytes, bytes the packet spans).

    Plain framing (RFC 6716 3.2) spans all of ``packet``; with
    ``self_delimited`` (RFC 6716 Appendix B) the packet may be followed by
    other data (the next stream of a multistream packet), which is not read.
    """
    cdef const unsigned char[::1] p = bytes(packet)
    cdef Py_ssize_t n = p.shape[0]
    cdef Framing f
    cdef int rc, i
    cdef Py_ssize_t at
    with nogil:
        rc = parse_framing(&p[0] if n else NULL, n, self_delimited, &f)
    if rc < 0:
        kind = "self-delimited " if self_delimited else ""
        raise CodecError("parse_packet", rc, f"not a valid {kind}Opus packet")
    frames = []
    at = f.pos
    for i in range(f.count):
        frames.append(bytes(p[at:at + f.sizes[i]]))
        at += f.sizes[i]
    return frames, f.padding, at + f.padding


def self_delimited(packet) -> bytes:
    """One Opus packet rewritten in self-delimiting framing (RFC 6716 Appendix B)."""
    cdef const unsigned char[::1] p = bytes(packet)
    cdef Py_ssize_t n = p.shape[0], rc
    out = bytearray(n + 2)
    cdef unsigned char[::1] o = out
    if n == 0:
        raise ValueError("an empty packet has no TOC byte: it cannot be self-delimited")
    with nogil:
        rc = to_self_delimited(&p[0], n, &o[0])
    check(<int>rc, "self_delimited")
    return bytes(out[:rc])


def pack_multistream(data_a, lengths_a, data_b, lengths_b):
    """Two mono legs' packets, frame by frame, into 2-stream packets (RFC 7845 5.1.1).

    Each output packet is leg A's packet in self-delimiting framing followed
    by leg B's packet as is. Both legs need the same number of packets and,
    per frame, the same duration. Returns (data, int32 lengths).
    """
    cdef const unsigned char[::1] da = bytes(data_a)
    cdef const unsigned char[::1] db = bytes(data_b)
    oa_arr = _offsets(lengths_a, da.shape[0])
    ob_arr = _offsets(lengths_b, db.shape[0])
    cdef const long long[::1] oa = oa_arr
    cdef const long long[::1] ob = ob_arr
    cdef Py_ssize_t n = oa.shape[0] - 1, i, used = 0, rc = 0, la, lb
    if ob.shape[0] - 1 != n:
        raise ValueError(f"leg A has {n} packets, leg B {ob.shape[0] - 1}: they must match")
    lengths = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] lens = lengths
    cdef Py_ssize_t cap = da.shape[0] + db.shape[0] + 2 * n + 1
    out = bytearray(cap)
    cdef unsigned char[::1] o = out
    cdef const unsigned char *pa = &da[0] if da.shape[0] else NULL
    cdef const unsigned char *pb = &db[0] if db.shape[0] else NULL
    cdef Py_ssize_t bad = -1
    cdef int why = 0
    with nogil:
        for i in range(n):
            la = oa[i + 1] - oa[i]
            lb = ob[i + 1] - ob[i]
            if la == 0 or lb == 0:
                bad = i
                why = 1
                break
            if (opus_packet_get_nb_samples(pa + oa[i], <int32_t>la, 48000)
                    != opus_packet_get_nb_samples(pb + ob[i], <int32_t>lb, 48000)):
                bad = i
                why = 2
                break
            rc = to_self_delimited(pa + oa[i], la, &o[used])
            if rc < 0:
                bad = i
                why = 3
                break
            memcpy(&o[used + rc], pb + ob[i], lb)
            lens[i] = <int32_t>(rc + lb)
            used += rc + lb
    if why == 1:
        raise ValueError(f"frame {bad}: an empty (lost) packet cannot be packed; "
                         "fill losses with a real packet first")
    if why == 2:
        raise ValueError(f"frame {bad}: the two legs' packets have different durations "
                         "(or one is invalid)")
    if why == 3:
        raise CodecError("pack_multistream", OPUS_INVALID_PACKET,
                         f"leg A packet {bad} is not a valid Opus packet")
    return bytes(out[:used]), lengths


def unpack_multistream(packet, int streams) -> list:
    """Split one multistream packet into ``streams`` plain-framed packets."""
    cdef const unsigned char[::1] p = bytes(packet)
    cdef Py_ssize_t n = p.shape[0], pos = 0, used = 0, rc
    cdef int s
    if streams < 1:
        raise ValueError("streams must be >= 1")
    out = []
    buf = bytearray(n + 1)
    cdef unsigned char[::1] b = buf
    for s in range(streams - 1):
        with nogil:
            rc = from_self_delimited(&p[0] + pos if n else NULL, n - pos, &b[0], &used)
        if rc < 0:
            raise CodecError("unpack_multistream", OPUS_INVALID_PACKET,
                             f"stream {s} is not a valid self-delimited packet")
        out.append(bytes(buf[:rc]))
        pos += used
    if pos >= n:
        raise CodecError("unpack_multistream", OPUS_INVALID_PACKET, "the last stream is missing")
    out.append(bytes(p[pos:]))
    return out


def packet_samples(packet, int sample_rate=48000) -> int:
    """Samples in one packet at ``sample_rate`` (RFC 6716 3.1 TOC + frame count)."""
    cdef const unsigned char[::1] p = bytes(packet)
    cdef int rc
    if p.shape[0] == 0:
        raise ValueError("empty packet")
    with nogil:
        rc = opus_packet_get_nb_samples(&p[0], <int32_t>p.shape[0], sample_rate)
    return check(rc, "opus_packet_get_nb_samples")


# --------------------------------------------------------------------------
# Ogg page CRC (RFC 3533 6: polynomial 0x04c11db7, init 0, no reflection, no final xor)


cdef uint32_t CRC_TABLE[256]


cdef void _crc_init() noexcept nogil:
    cdef uint32_t r
    cdef int i, j
    for i in range(256):
        r = (<uint32_t>i) << 24
        for j in range(8):
            if r & 0x80000000u:
                r = (r << 1) ^ 0x04C11DB7u
            else:
                r = r << 1
        CRC_TABLE[i] = r


_crc_init()


def ogg_crc(data, unsigned int crc=0) -> int:
    """The Ogg page checksum of ``data`` (continue from ``crc`` to chain buffers)."""
    cdef const unsigned char[::1] d = data if isinstance(data, bytes) else bytes(data)
    cdef Py_ssize_t i, n = d.shape[0]
    cdef uint32_t c = crc
    with nogil:
        for i in range(n):
            c = (c << 8) ^ CRC_TABLE[((c >> 24) ^ d[i]) & 0xFF]
    return c
