# cython: language_level=3
"""One leg's audio path, one call per batch, without the GIL. Module ``callvault._leg``.

    RTP batch -> JitterBuffer (callvault._rtp) -> DtmfDetector, Vad, levels
              (callvault._dsp) -> Opus Encoder (callvault._opus) at the voice or
              silence bitrate -> DTX packets replaced by the noise encoder's

``LegCore.push_rtp`` runs that whole chain for one batch in C, with the GIL
released from the first packet to the last packet encoded, and keeps what it
produced in C buffers: the Opus packets (taken by ``take_packets``, as many as
a record needs), the counters a leg summary needs, the PCM when asked to.
Python sees one call per batch and no object per packet or per frame (a DTMF
digit that ended is the exception: a few a call). So the server's calls, each
under its own lock, run their audio work on every core.

The steps are the modules' own loops (``cimport``\\ ed through
ext/callvault/*.pxd), called in the order media/pipeline.py's step-by-step path
calls them, so the packets are byte for byte those of that path
(tests/media/test_pipeline_core.py compares them): frames in timeline order;
per batch of frames from the jitter buffer (or ``push_frames``): DTMF
detection and masking over the batch, then VAD, then the levels of the frames
the detector released (one sum over the batch, as ``_dsp.levels``), then each
run of voice / silent frames at its bitrate (OPUS_GET_BITRATE, and
OPUS_SET_BITRATE when it differs, at the start of each run), and every packet
of at most ``dtx_max`` bytes (libopus DTX) replaced at once by the noise
encoder's packet for the same frame, capped at ``dtx_bytes``
(media/ogg.replace_dtx, docs/opus-silence.md).

PCI pause (``set_mute``): frames in the muted spans are zeroed before the DTMF
stage, so nothing of them reaches the detector, the levels or the encoder; the
step path zeroes the same frames (media/pipeline.py ``LegPipeline._dsp``).
"""
import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport INFINITY, pow
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove, memset

from callvault._dsp cimport FRAME, HOLD_FRAMES, DtmfDetector, Vad, batch_stats, dbfs
from g711 cimport cv_alaw_encode, cv_ulaw_encode
from callvault._opus cimport Encoder
from callvault._rtp cimport JitterBuffer

from callvault.errors import CodecError
from callvault.rtpdefs import check_batch

cnp.import_array()

cdef enum:
    MAX_PACKET = 4000  # what libopus may write for one frame (ext/_opus.pyx)
    LAW_NONE = 0
    LAW_ULAW = 1  # ext/_g711.pyx PCMU
    LAW_ALAW = 2  # ext/_g711.pyx PCMA
    OK = 0
    E_NOMEM = -1
    E_ENCODE = -2
    E_NOISE = -3
    E_BITRATE = -4
    E_HOLE = -5
    E_DTX = -6

cdef int16_t SILENT_FRAME[FRAME]
memset(SILENT_FRAME, 0, sizeof(SILENT_FRAME))


cdef inline bint _is_vector(object a, int typenum):
    return (cnp.PyArray_Check(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef int grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, Py_ssize_t item) noexcept nogil:
    """Make room for ``need`` items of ``item`` bytes in *buf (doubling); 0, or -1."""
    cdef Py_ssize_t c = cap[0]
    cdef void *p
    if need <= c:
        return 0
    if c < 64:
        c = 64
    while c < need:
        c *= 2
    p = realloc(buf[0], c * item)
    if p == NULL:
        return -1
    buf[0] = p
    cap[0] = c
    return 0


cdef class LegCore:
    """One leg's jitter buffer, DSP and encoders driven from C (see the module docstring).

    ``encoder`` None: no encoding (frames and counters only), or with ``g711_law``
    (``_g711.PCMU`` / ``PCMA``) each frame stored as a 160-byte G.711 packet
    instead of Opus (a non-Opus store); ``noise`` None: DTX packets are kept as
    libopus made them; ``silence_bitrate`` <= 0: every frame at ``bitrate``. The objects belong to the core from then on (one thread at a
    time, as each of them)."""

    cdef readonly JitterBuffer jb
    cdef readonly DtmfDetector dtmf
    cdef readonly Vad vad
    cdef Encoder enc
    cdef Encoder noise
    cdef int32_t bitrate, silence_bitrate, dtx_bytes, dtx_max
    cdef bint keep_pcm, finished
    cdef int law
    # packets encoded and not taken yet
    cdef unsigned char *pk
    cdef Py_ssize_t pk_used, pk_cap
    cdef int32_t *lens
    cdef Py_ssize_t n_pk, cap_lens
    # frames kept (keep_pcm)
    cdef int16_t *pcm
    cdef Py_ssize_t n_pcm, cap_pcm
    # scratch: frames the DTMF masker released, voice flags, DTMF events
    cdef int16_t *masked
    cdef Py_ssize_t cap_masked
    cdef uint8_t *voice
    cdef Py_ssize_t cap_voice
    cdef int8_t *ev_digit
    cdef int64_t *ev_start
    cdef int64_t *ev_end
    cdef Py_ssize_t cap_ev
    cdef int err_code
    cdef int64_t err_frame
    cdef list events
    # PCI pause: half-open frame spans [mute[2k], mute[2k + 1]) stored as silence, and
    # the scratch copy of a batch some of whose frames are zeroed
    cdef int64_t *mute
    cdef Py_ssize_t n_mute, cap_mute
    cdef int16_t *quiet
    cdef Py_ssize_t cap_quiet
    # the encoder runs with DTX (as made); over muted frames DTX is switched off, so
    # that their silence is coded by real packets of the encoder itself: a DTX packet
    # replaced by the noise encoder's, then the encoder's own again, decodes to loud
    # bursts after abrupt digital silence (its state and the decoder's differ)
    cdef bint dtx_on, dtx_held
    # what the leg summary needs (LegResult): frames through the DSP, voice frames,
    # levels (sum of squares as media/pipeline.py adds it up, peak |x|, clipped
    # samples), Opus bytes; the next frame index the DSP expects
    cdef readonly int64_t next_index, frames, voice_frames, clipped, opus_bytes
    cdef readonly int32_t peak
    cdef readonly double sumsq

    def __cinit__(self, JitterBuffer jb not None, DtmfDetector dtmf not None, Vad vad not None,
                  Encoder encoder=None, Encoder noise=None, *, int bitrate=12000,
                  int silence_bitrate=0, int dtx_bytes=0, int dtx_max=2, bint keep_pcm=False,
                  g711_law=None):
        if noise is not None and (encoder is None or not 1 <= dtx_bytes <= MAX_PACKET):
            raise ValueError("a noise encoder needs the encoder and dtx_bytes in 1..4000")
        if g711_law is not None:
            from callvault import _g711
            if encoder is not None:
                raise ValueError("frames are stored either as Opus (encoder) or as G.711")
            laws = {_g711.PCMU: LAW_ULAW, _g711.PCMA: LAW_ALAW}
            if g711_law not in laws:
                raise ValueError(f"g711_law must be _g711.PCMU or _g711.PCMA, not {g711_law!r}")
            self.law = laws[g711_law]
        self.jb = jb
        self.dtmf = dtmf
        self.vad = vad
        self.enc = encoder
        self.noise = noise
        self.bitrate = bitrate
        self.silence_bitrate = silence_bitrate
        self.dtx_bytes = dtx_bytes
        self.dtx_max = dtx_max
        self.keep_pcm = keep_pcm
        self.events = []
        self.dtx_on = encoder is not None and encoder.dtx

    def set_g711_law(self, g711_law):
        """Peak mode: the G.711 law of a leg whose law is known only from its first
        audio packet; allowed only before the first frame (packets already stored keep
        one law)."""
        from callvault import _g711
        laws = {_g711.PCMU: LAW_ULAW, _g711.PCMA: LAW_ALAW}
        if self.law == LAW_NONE or g711_law not in laws:
            raise ValueError("set_g711_law: a G.711 core and _g711.PCMU or _g711.PCMA")
        if self.next_index or self.n_pk:
            raise ValueError("set_g711_law: frames are stored already")
        self.law = laws[g711_law]

    def __dealloc__(self):
        if self.dtmf is not None and self.dtmf.ev_digit == self.ev_digit:
            self._detach_events()
        free(self.pk)
        free(self.lens)
        free(self.pcm)
        free(self.masked)
        free(self.voice)
        free(self.ev_digit)
        free(self.ev_start)
        free(self.ev_end)
        free(self.mute)
        free(self.quiet)

    def set_mute(self, spans):
        """The frames to store as silence (PCI pause): ``spans`` is a sequence of
        (start, end) half-open frame ranges, replacing the ones given before; frames
        through the DSP already keep what they were."""
        a = np.ascontiguousarray(np.asarray(spans, dtype=np.int64).reshape(-1, 2))
        cdef Py_ssize_t n = a.shape[0]
        if grow(<void **>&self.mute, &self.cap_mute, 2 * n + 2, sizeof(int64_t)) < 0:
            raise MemoryError("set_mute: the leg's buffers could not grow")
        if n:
            memcpy(self.mute, cnp.PyArray_DATA(a), 2 * n * sizeof(int64_t))
        self.n_mute = n

    # -- the chain, in C ---------------------------------------------------------------
    cdef bint _frame_muted(self, int64_t f) noexcept nogil:
        cdef Py_ssize_t k
        for k in range(self.n_mute):
            if self.mute[2 * k] <= f < self.mute[2 * k + 1]:
                return True
        return False

    cdef int _encode(self, const int16_t *x, const uint8_t *voice, Py_ssize_t n) noexcept nogil:
        """Encode n frames (the last n of ``frames``), each run of voice / silent frames
        at its bitrate, DTX off over muted frames, and replace DTX packets with the
        noise encoder's."""
        cdef Py_ssize_t i
        cdef int32_t rate, cur
        cdef int rc
        cdef bint m
        cdef unsigned char *out
        for i in range(n):
            if self.dtx_on and (self.n_mute or self.dtx_held):
                m = self._frame_muted(self.frames - n + i)
                if m != self.dtx_held:
                    rc = self.enc.c_set_dtx(0 if m else 1)
                    if rc < 0:
                        self.err_code = rc
                        self.err_frame = i
                        return E_DTX
                    self.dtx_held = m
            if i == 0 or (self.silence_bitrate > 0 and voice[i] != voice[i - 1]):
                rate = self.bitrate if self.silence_bitrate <= 0 or voice[i] else self.silence_bitrate
                cur = self.enc.c_bitrate()
                if cur >= 0 and cur != rate:
                    cur = self.enc.c_set_bitrate(rate)
                if cur < 0:
                    self.err_code = cur
                    self.err_frame = i
                    return E_BITRATE
            if grow(<void **>&self.pk, &self.pk_cap, self.pk_used + MAX_PACKET, 1) < 0 or \
                    grow(<void **>&self.lens, &self.cap_lens, self.n_pk + 1, sizeof(int32_t)) < 0:
                return E_NOMEM
            out = self.pk + self.pk_used
            rc = self.enc.c_encode(x + i * FRAME, out, MAX_PACKET)
            if rc < 0:
                self.err_code = rc
                self.err_frame = i
                return E_ENCODE
            if self.noise is not None and rc <= self.dtx_max:
                rc = self.noise.c_encode(x + i * FRAME, out, self.dtx_bytes)
                if rc < 0:
                    self.err_code = rc
                    self.err_frame = i
                    return E_NOISE
            self.lens[self.n_pk] = rc
            self.n_pk += 1
            self.pk_used += rc
            self.opus_bytes += rc
        return OK

    cdef int _after_dtmf(self, const int16_t *x, Py_ssize_t n) noexcept nogil:
        """VAD, levels, kept PCM and encoding of n frames the DTMF stage released."""
        cdef Py_ssize_t i
        cdef int64_t acc = 0, clipped = 0
        cdef int32_t peak = 0
        cdef double rms
        if n == 0:
            return OK
        self.frames += n
        if grow(<void **>&self.voice, &self.cap_voice, n, 1) < 0:
            return E_NOMEM
        self.vad._run(x, n, self.voice)
        for i in range(n):
            self.voice_frames += self.voice[i]
        batch_stats(x, n, &acc, &peak, &clipped)
        rms = dbfs(acc, n * FRAME)
        if rms > -INFINITY:  # as media/pipeline.py adds it up from _dsp.levels
            self.sumsq += <double>(n * FRAME) * pow(32768.0 * pow(10.0, rms / 20), 2.0)
        if peak > self.peak:
            self.peak = peak
        self.clipped += clipped
        if self.keep_pcm:
            if grow(<void **>&self.pcm, &self.cap_pcm, (self.n_pcm + n) * FRAME,
                    sizeof(int16_t)) < 0:
                return E_NOMEM
            memcpy(self.pcm + self.n_pcm * FRAME, x, n * FRAME * sizeof(int16_t))
            self.n_pcm += n
        if self.enc is not None:
            return self._encode(x, self.voice, n)
        if self.law != LAW_NONE:
            return self._g711(x, n)
        return OK

    cdef int _g711(self, const int16_t *x, Py_ssize_t n) noexcept nogil:
        """n frames as n packets of FRAME G.711 bytes each."""
        cdef Py_ssize_t i, j
        cdef unsigned char *out
        if grow(<void **>&self.pk, &self.pk_cap, self.pk_used + n * FRAME, 1) < 0 or \
                grow(<void **>&self.lens, &self.cap_lens, self.n_pk + n, sizeof(int32_t)) < 0:
            return E_NOMEM
        out = self.pk + self.pk_used
        if self.law == LAW_ULAW:
            for j in range(n * FRAME):
                out[j] = cv_ulaw_encode(x[j])
        else:
            for j in range(n * FRAME):
                out[j] = cv_alaw_encode(x[j])
        for i in range(n):
            self.lens[self.n_pk + i] = FRAME
        self.n_pk += n
        self.pk_used += n * FRAME
        self.opus_bytes += n * FRAME
        return OK

    cdef int _event_room(self, Py_ssize_t need) noexcept nogil:
        """Room for ``need`` DTMF events in the three event arrays."""
        cdef Py_ssize_t c1 = self.cap_ev, c2 = self.cap_ev, c3 = self.cap_ev
        if need <= self.cap_ev:
            return 0
        if (grow(<void **>&self.ev_digit, &c1, need, sizeof(int8_t)) < 0
                or grow(<void **>&self.ev_start, &c2, need, sizeof(int64_t)) < 0
                or grow(<void **>&self.ev_end, &c3, need, sizeof(int64_t)) < 0):
            return -1
        self.cap_ev = c1  # the same doubling from the same capacity: c1 == c2 == c3
        return 0

    cdef const int16_t *_muted(self, const int16_t *x, Py_ssize_t n, int64_t first) noexcept nogil:
        """``x``, or a copy with the frames of the muted spans zeroed; NULL: no memory."""
        cdef Py_ssize_t k
        cdef int64_t lo, hi
        cdef bint copied = False
        for k in range(self.n_mute):
            lo = self.mute[2 * k] if self.mute[2 * k] > first else first
            hi = self.mute[2 * k + 1] if self.mute[2 * k + 1] < first + n else first + n
            if lo >= hi:
                continue
            if not copied:
                if grow(<void **>&self.quiet, &self.cap_quiet, n * FRAME, sizeof(int16_t)) < 0:
                    return NULL
                memcpy(self.quiet, x, n * FRAME * sizeof(int16_t))
                copied = True
            memset(self.quiet + (lo - first) * FRAME, 0, (hi - lo) * FRAME * sizeof(int16_t))
        return self.quiet if copied else x

    cdef int _dsp(self, const int16_t *x, Py_ssize_t n, int64_t first) noexcept nogil:
        """n frames on the timeline from frame ``first``: the muted spans zeroed, DTMF,
        then the rest."""
        cdef Py_ssize_t n_out, cap
        if n == 0:
            return OK
        if first != self.next_index:
            self.err_frame = first
            return E_HOLE
        if self.n_mute:
            x = self._muted(x, n, first)
            if x == NULL:
                return E_NOMEM
        self.next_index += n
        if not self.dtmf.started:
            self.dtmf.started = True
            self.dtmf.pos = first * FRAME
        # at most 2n / CONFIRM_BLOCKS + 1 digits end in n frames (ext/_dsp.pyx process)
        if self._event_room(2 * n // 3 + 2) < 0:
            return E_NOMEM
        self.dtmf.ev_digit = self.ev_digit
        self.dtmf.ev_start = self.ev_start
        self.dtmf.ev_end = self.ev_end
        self.dtmf.ev_cap = self.cap_ev
        if not self.dtmf.masking:
            self.dtmf._run(x, n, NULL)
            return self._after_dtmf(x, n)
        n_out = self.dtmf.hold_count + n - HOLD_FRAMES
        if n_out < 0:
            n_out = 0
        if grow(<void **>&self.masked, &self.cap_masked, n_out * FRAME, sizeof(int16_t)) < 0:
            return E_NOMEM
        n_out = self.dtmf._run(x, n, self.masked)
        return self._after_dtmf(self.masked, n_out)

    # -- with the GIL --------------------------------------------------------------------
    cdef void _detach_events(self):
        d = self.dtmf
        d.ev_digit = NULL
        d.ev_start = NULL
        d.ev_end = NULL
        d.ev_cap = 0
        d.ev_n = 0

    cdef int _done(self, int rc, str what) except -1:
        """Gather the DTMF events, then raise what went wrong, if anything."""
        if self.dtmf.ev_digit == self.ev_digit and self.ev_digit != NULL:
            if self.dtmf.ev_n:
                self.events.extend(self.dtmf._take_events())
            self._detach_events()
        if rc == OK:
            return 0
        if rc == E_NOMEM:
            raise MemoryError(f"{what}: the leg's buffers could not grow")
        if rc == E_HOLE:
            raise AssertionError(
                f"timeline hole: frame {self.err_frame}, expected {self.next_index}")
        fn = {E_ENCODE: "opus_encode", E_NOISE: "opus_encode (DTX replacement)",
              E_BITRATE: "opus_encoder_ctl(OPUS_SET_BITRATE)",
              E_DTX: "opus_encoder_ctl(OPUS_SET_DTX)"}[rc]
        raise CodecError(f"{fn} (frame {self.err_frame})", self.err_code, "libopus error")

    cdef int _open(self) except -1:
        if self.finished:
            raise RuntimeError("this leg was finished; it takes no more audio")
        return 0

    def push_rtp(self, data, offsets, lengths, arrival_us):
        """One batch of RTP packets (as JitterBuffer.push takes them) through the whole
        chain; returns how many DTMF digits have ended and are not taken yet."""
        cdef const uint8_t *bp
        cdef const int64_t *o
        cdef const int32_t *l
        cdef const int64_t *t
        cdef const int16_t *pcm
        cdef Py_ssize_t n, blen
        cdef int64_t first, nf
        cdef int rc = OK, pushed
        cdef object keep = None
        cdef JitterBuffer jb = self.jb
        self._open()
        if jb.closed:
            raise RuntimeError("this jitter buffer was flushed; it accepts no more packets")
        if arrival_us is None:
            raise ValueError("arrival_us is required: one arrival time per packet")
        if not (type(data) is bytes and _is_vector(offsets, cnp.NPY_INT64)
                and _is_vector(lengths, cnp.NPY_INT32) and _is_vector(arrival_us, cnp.NPY_INT64)
                and cnp.PyArray_SIZE(lengths) == cnp.PyArray_SIZE(offsets)
                and cnp.PyArray_SIZE(arrival_us) == cnp.PyArray_SIZE(offsets)):
            keep = check_batch(data, offsets, lengths, arrival_us, bounds=False)
            data, offsets, lengths, arrival_us = keep
        bp = <const uint8_t *>PyBytes_AS_STRING(data)
        blen = PyBytes_GET_SIZE(data)
        o = <const int64_t *>cnp.PyArray_DATA(offsets)
        l = <const int32_t *>cnp.PyArray_DATA(lengths)
        t = <const int64_t *>cnp.PyArray_DATA(arrival_us)
        n = cnp.PyArray_SIZE(offsets)
        with nogil:
            first = jb.c_first_frame()
            pushed = jb.c_push(bp, blen, o, l, t, n)
            if pushed == 0:
                nf = jb.c_output(&pcm)
                rc = self._dsp(pcm, nf, first)
            if pushed != -1:
                jb.c_clear_output()
        if pushed == -1:
            check_batch(data, offsets, lengths, arrival_us)  # raises, saying what is wrong
            raise AssertionError("unreachable: batch check disagreed")
        if pushed == -2:
            rc = E_NOMEM
        self._done(rc, "push_rtp")
        return len(self.events)

    def push_batch(self, data, lengths, arrival_us):
        """``push_rtp`` for packets back to back in ``data`` (bytes), with their int32
        ``lengths`` and int64 ``arrival_us`` (as an Ingest RtpBatch carries them):
        the offsets are summed here, in C."""
        cdef Py_ssize_t i, n
        cdef int64_t at = 0
        cdef int64_t *o
        if type(data) is not bytes:
            data = bytes(data)
        if not _is_vector(lengths, cnp.NPY_INT32):
            lengths = np.ascontiguousarray(lengths, dtype=np.int32).reshape(-1)
        n = cnp.PyArray_SIZE(lengths)
        offsets = np.empty(n, dtype=np.int64)
        o = <int64_t *>cnp.PyArray_DATA(offsets)
        cdef const int32_t *l = <const int32_t *>cnp.PyArray_DATA(lengths)
        for i in range(n):
            o[i] = at
            at += l[i]
        return self.push_rtp(data, offsets, lengths, arrival_us)

    def push_frames(self, pcm, long long first_index):
        """(n, 160) int16 frames already on the timeline (the jitter buffer's flush,
        WAV input, silence padding) from frame ``first_index``; returns as push_rtp."""
        cdef const int16_t[:, ::1] v
        cdef Py_ssize_t n
        cdef int rc = OK
        self._open()
        a = np.ascontiguousarray(pcm, dtype=np.int16)
        if a.ndim != 2 or a.shape[1] != FRAME:
            raise ValueError(f"expected frames of shape (n, {FRAME}), got {a.shape}")
        v = a
        n = v.shape[0]
        if n:
            with nogil:
                rc = self._dsp(&v[0, 0], n, first_index)
        self._done(rc, "push_frames")
        return len(self.events)

    def finish(self):
        """End of the leg: the frames the DTMF masker held back and the digit still
        sounding, then (when encoding) one silent frame that pushes the encoder's
        lookahead out; returns as push_rtp. The leg takes no more audio."""
        cdef const int16_t[:, ::1] v
        cdef Py_ssize_t n
        cdef int rc = OK
        cdef uint8_t silent = 0
        self._open()
        held, events = self.dtmf.flush()
        self.events.extend(events)
        v = held
        n = v.shape[0]
        with nogil:
            if n:
                rc = self._after_dtmf(&v[0, 0], n)
            if rc == OK and self.enc is not None:
                rc = self._encode(SILENT_FRAME, &silent, 1)
        self.finished = True
        self._done(rc, "finish")
        return len(self.events)

    # -- taking the output ---------------------------------------------------------------
    @property
    def packets(self) -> int:
        """Packets encoded and not taken yet."""
        return self.n_pk

    def take_packets(self, Py_ssize_t n=-1):
        """The first ``n`` packets not taken yet (all with -1): (data, int32 lengths)."""
        cdef Py_ssize_t nbytes = 0, i
        if n < 0 or n > self.n_pk:
            n = self.n_pk
        for i in range(n):
            nbytes += self.lens[i]
        lengths = np.empty(n, dtype=np.int32)
        if n:
            memcpy(cnp.PyArray_DATA(lengths), self.lens, n * sizeof(int32_t))
        data = PyBytes_FromStringAndSize(<char *>self.pk, nbytes) if nbytes else b""
        if n:
            memmove(self.lens, self.lens + n, (self.n_pk - n) * sizeof(int32_t))
            memmove(self.pk, self.pk + nbytes, self.pk_used - nbytes)
            self.n_pk -= n
            self.pk_used -= nbytes
        return data, lengths

    def take_pcm(self):
        """The frames kept (keep_pcm) since the last take: (n, 160) int16."""
        out = np.empty((self.n_pcm, FRAME), dtype=np.int16)
        if self.n_pcm:
            memcpy(cnp.PyArray_DATA(out), self.pcm, self.n_pcm * FRAME * sizeof(int16_t))
        self.n_pcm = 0
        return out

    def take_events(self):
        """The DTMF digits (_dsp.DtmfEvent) that ended since the last take."""
        out = self.events
        self.events = []
        return out
