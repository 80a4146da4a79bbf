"""One leg's path from RTP (or PCM) to encoded Opus frames, and a whole call's transcode.

    RTP batch -> JitterBuffer (ext/_rtp) -> PCM frames on the call timeline
              -> DtmfDetector (ext/_dsp, optional PCI masking) -> Vad, levels
              -> Opus Encoder (ext/_opus), one packet per 20 ms frame

``LegPipeline`` runs that chain through ``callvault._leg.LegCore`` (ext/_leg.pyx):
one C call per batch, the GIL released over all of it, packets and counters kept
in C until taken (``take_packets``) or the leg ends (``finish`` fills the
``LegResult``). ``core=False`` runs the same steps one Python call at a time:
the reference the core is tested against (tests/media/test_pipeline_core.py),
and a place for a step the core does not have yet. Besides Opus, the core can
store each frame as G.711 (``g711_law``: lane "peak"'s non-Opus store).

The jitter buffer decodes through a table of payload type -> decoder (G.711
PCMU 0 and PCMA 8 today, ``_rtp.DECODER`` / ``jitter_ref.DECODERS``): a codec
is one more entry there. Audio in any other payload type (not comfort noise,
not a declared RFC 4733 event) is not silence: its frames are zeros marked
"unsupported codec", reported in the leg summary's gaps with their payload
type and in its ``unsupported_codec`` totals (docs/format.md 1.1).

PCI (docs/format.md 1.1, 1.2): ``Settings.mask_dtmf`` zeroes in-band DTMF tones
in the stored audio (RFC 4733 events are never rendered into audio: the jitter
buffer keeps their span silent unless audio covers it); ``Settings.keep_digits``
False seals where DTMF occurred but not which digits (``digits_kept``);
``LegPipeline.set_paused`` stores spans of frames as silence (a PCI pause),
before the DTMF stage, and keeps them out of the leg's gaps and loss.

Both legs of a call share ``call_start_us`` and are flushed to the same end,
so they have the same number of frames and frame n of each leg is the same
20 ms of the call: a dual-track Ogg pairs them with no re-encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault import _dsp, _g711, _leg, _opus, _rtp
from callvault.errors import InputError
from callvault.media import capture, ogg, wav
from callvault.media.packets import PacketRun
from callvault.rtpdefs import RECORDED_CODECS
from callvault.timeline import FRAME_SAMPLES, frames_seconds, samples_ms

FRAME = FRAME_SAMPLES  # samples per frame; importers may prefer callvault.timeline
# Loss within this many frames of a paused span (300 ms, the jitter window: a packet
# of up to that much audio, like ffmpeg's 182 ms ones, discarded at the pause or the
# resume) is the pause's doing, not the network's (LegResult.lost_runs).
PAUSE_EDGE_FRAMES = 15
LEG_NAMES = ("agent", "customer")


@dataclass(frozen=True)
class Settings:
    """How a call is turned into Opus; defaults are the product's defaults."""

    bitrate: int = 12_000  # per leg, bits per second, while the leg's VAD hears voice
    # In frames the VAD calls silent (the other party talking, pauses), the line
    # noise is coded at this lower rate; None codes every frame at ``bitrate``.
    silence_bitrate: int | None = 8_000
    # A frame is voice this far above the leg's noise floor; 12 dB rather than
    # _dsp.Vad's 9 because pink line noise swings 9 dB between 20 ms frames.
    vad_threshold_db: float = 12.0
    complexity: int = 8  # PESQ 3.97 vs 3.67 at 5, same as 10 (docs/opus-silence.md)
    dtx: bool = True  # libopus DTX: TOC-only packets in steady noise ...
    # ... each replaced at once by a real packet of at most this many bytes,
    # coding the same noise, so every decoder (ffmpeg's built-in one too)
    # decodes the stored packets alike; 0 keeps libopus's TOC-only packets.
    dtx_packet_bytes: int = 15
    mask_dtmf: bool = False
    # Digits of DTMF (in-band and RFC 4733) in the leg summary; False keeps only that
    # a digit occurred, where and how long (the server's and `import`'s default:
    # [dtmf] keep_digits, docs/format.md 1.1 "digits_kept").
    keep_digits: bool = True
    window_ms: int = 300  # jitter-buffer reordering window
    # What fills lost frames: "conceal" (the last frame repeated, fading out over
    # 80 ms; tests/media/test_quality.py: better PESQ-NB than silence at 2 % burst
    # loss) or "silence". Either way the gaps are in the metadata.
    fill: str = "conceal"
    # What ingest stores (docs/server.md "Settings", ingest_codec): "opus", or "g711":
    # each leg's de-jittered frames as G.711 in its wire law (160 bytes per frame,
    # docs/format.md 8.5), turned into Opus later by the compactor (vault/compact.py).
    # Not an encoder setting: the compactor encodes with the others.
    store_codec: str = "opus"


@dataclass
class LegResult:
    name: str
    source: str
    frames: int = 0
    pcm: list[npt.NDArray[np.int16]] = field(default_factory=list)
    # one Opus packet per frame, plus a last one that flushes the encoder
    packets: list[tuple[bytes, npt.NDArray[np.int32]]] = field(default_factory=list)
    opus_bytes: int = 0
    codec: int = 1  # the AUDIO records' codec byte (docs/format.md 8.5): 1 Opus, 2/3 G.711
    voice_frames: int = 0
    rtp: dict[str, int] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # loss: (start frame, frames)
    # audio in a codec no decoder handles: (start frame, frames, payload type)
    unsupported: list[tuple[int, int, int]] = field(default_factory=list)
    unsupported_payload_types: list[int] = field(default_factory=list)
    telephone_events: list[dict[str, Any]] = field(default_factory=list)
    dtmf: list[dict[str, Any]] = field(default_factory=list)
    sumsq: float = 0.0
    peak: int = 0
    clipped: int = 0
    keep_digits: bool = True
    # PCI pauses: (start frame, frames) stored as silence, never loss
    paused: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = self.frames * FRAME_SAMPLES
        rms = 10 * math.log10(self.sumsq / n / 32768.0**2) if n and self.sumsq > 0 else None
        gaps = self.gap_list()
        lost = sum(int(g["frames"]) for g in gaps if g["reason"] == "lost")
        return {
            "leg": self.name,
            "source": self.source,
            "frames": self.frames,
            "seconds": frames_seconds(self.frames),
            # frames touched by loss: wholly lost ones and partly received ones
            # (paused frames are not loss)
            "lost": lost,
            "late": self.rtp.get("late", 0),
            "duplicates": self.rtp.get("duplicates", 0),
            "malformed": self.rtp.get("malformed", 0),
            "gaps": gaps,
            "unsupported_codec": {
                "frames": sum(n for _, n, _ in self.unsupported),
                "packets": self.rtp.get("unsupported_payload_type", 0),
                "payload_types": list(self.unsupported_payload_types),
            },
            "telephone_events": self._events(self.telephone_events),
            "dtmf": self._events(self.dtmf),
            "digits_kept": self.keep_digits,
            **({"paused_edge_frames": self.lost_runs()[1]} if self.paused else {}),
            "voice_frames": self.voice_frames,
            "level": {
                "rms_dbfs": None if rms is None else round(rms, 2),
                "peak": self.peak,
                "clipped": self.clipped,
            },
            "bytes": self.opus_bytes,
            "rtp": self.rtp,
        }

    def _events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """DTMF events as sealed: without their digit unless ``keep_digits``."""
        if self.keep_digits:
            return events
        return [{k: v for k, v in e.items() if k != "digit"} for e in events]

    def lost_runs(self) -> tuple[list[tuple[int, int]], int]:
        """The loss runs (start, frames) outside the paused spans, and the frames of
        loss within ``PAUSE_EDGE_FRAMES`` before or after a span, which the pause made
        (a packet that arrived after the pause instant, its audio before it, was
        discarded; a sender's packet may hold 180 ms of audio, sent ahead or late):
        counted in ``paused_edge_frames``, not as loss."""
        runs = outside(self.gaps, self.paused)
        edges = [(s - PAUSE_EDGE_FRAMES, PAUSE_EDGE_FRAMES) for s, _ in self.paused]
        edges += [(s + n, PAUSE_EDGE_FRAMES) for s, n in self.paused]
        kept = outside(runs, edges)
        return kept, sum(n for _, n in runs) - sum(n for _, n in kept)

    def gap_list(self) -> list[dict[str, Any]]:
        """Loss and unsupported-codec runs, by start frame (docs/format.md 1.1); the
        frames of paused spans are cut out of them (a pause is not loss), and so is
        the loss the pause made at its edges (``lost_runs``)."""
        gaps: list[dict[str, Any]] = [
            {"start_frame": s, "frames": n, "reason": "lost"} for s, n in self.lost_runs()[0]
        ]
        for s0, n0, pt in self.unsupported:
            gaps += [
                {"start_frame": s, "frames": n, "reason": "unsupported_codec", "payload_type": pt}
                for s, n in outside([(s0, n0)], self.paused)
            ]
        gaps.sort(key=lambda g: int(g["start_frame"]))
        return gaps

    def unsupported_reason(self) -> str | None:
        """A sentence when the leg received RTP but none of it in a recorded codec."""
        return leg_unsupported_reason(self.summary())

    def pcm_all(self) -> npt.NDArray[np.int16]:
        if not self.pcm:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([p.reshape(-1) for p in self.pcm])

    def opus_run(self) -> PacketRun:
        """The leg's Opus packets so far, one per frame (then the flush packet)."""
        return PacketRun.concat(self.packets)

    def packets_all(self) -> tuple[bytes, npt.NDArray[np.int32]]:
        """``opus_run()`` as ``(data, lengths)``."""
        return self.opus_run().astuple()


def outside(
    runs: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The (start, frames) runs with the frames of ``spans`` (start, frames) cut out."""
    out = [(int(s), int(s) + int(n)) for s, n in runs if n > 0]
    for ps, pn in spans:
        pe = ps + pn
        cut: list[tuple[int, int]] = []
        for a, b in out:
            if b <= ps or a >= pe:
                cut.append((a, b))
                continue
            if a < ps:
                cut.append((a, ps))
            if b > pe:
                cut.append((pe, b))
        out = cut
    return [(a, b - a) for a, b in out]


def call_unsupported_codec(legs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A call's audio in codecs callvault does not record, from its per-leg summaries
    (docs/format.md 1.1, "unsupported_codec"): the legs that had such packets, their
    payload types and the frames recorded as unsupported over all legs; None when
    there was none. Sealed in the manifest (8.5) so ``ls`` shows it without the
    summary."""
    names: list[str] = []
    pts: set[int] = set()
    frames = 0
    for leg in legs:
        u = leg.get("unsupported_codec") or {}
        if not (u.get("packets") or u.get("frames")):
            continue
        names.append(str(leg.get("leg", "?")))
        pts.update(int(p) for p in u.get("payload_types") or [])
        frames += int(u.get("frames") or 0)
    if not names:
        return None
    return {"legs": names, "payload_types": sorted(pts), "frames": frames}


def leg_unsupported_reason(summary: dict[str, Any]) -> str | None:
    """For a sealed leg summary (LegResult.summary, docs/format.md 1.1): a sentence when the
    leg received audio packets but every one was in a codec callvault does not record."""
    rtp = summary.get("rtp") or {}
    unsup = summary.get("unsupported_codec") or {}
    if not unsup.get("packets") or rtp.get("audio_packets", 0):
        return None
    pts = ", ".join(str(p) for p in unsup.get("payload_types") or []) or "?"
    return (
        f"leg {summary.get('leg')}: every audio packet was in an unsupported codec "
        f"(payload type {pts}; {unsup.get('frames', 0)} frames recorded as unsupported, "
        f"not as audio); callvault records {RECORDED_CODECS}"
    )


class LegPipeline:
    """Jitter buffer, DSP and encoder of one leg. Feed RTP or PCM, then finish()."""

    def __init__(
        self,
        name: str,
        source: str,
        settings: Settings,
        *,
        call_start_us: int = 0,
        event_payload_types: Sequence[int] = (101,),
        encode: bool = True,
        keep_pcm: bool = False,
        core: bool = True,
        g711_law: int | None = None,
    ) -> None:
        """``g711_law`` (``_g711.PCMU`` / ``PCMA``): the leg's frames are stored as
        160-byte G.711 packets, one per frame, instead of Opus (no encoder, no flush
        packet; ``result.packets`` / ``take_packets`` carry them, ``opus_bytes``
        counts their bytes)."""
        if g711_law is not None:
            encode = False
        self.g711_law = g711_law
        self.result = LegResult(name, source, keep_digits=settings.keep_digits)
        self._mute: list[tuple[int, int]] = []  # PCI pause: [start, end) frame spans
        self._dtx_held = False  # the step path's encoder has DTX off (paused frames)
        self.settings = settings
        self.jb = _rtp.JitterBuffer(
            call_start_us=call_start_us,
            window_ms=settings.window_ms,
            fill=settings.fill,
            event_payload_types=tuple(event_payload_types) or (101,),
        )
        self.dtmf = _dsp.DtmfDetector(mask=settings.mask_dtmf)
        self.vad = _dsp.Vad(threshold_db=settings.vad_threshold_db)
        if settings.store_codec not in ("opus", "g711"):
            raise ValueError(f"store_codec {settings.store_codec!r}: expected opus or g711")
        # peak mode: frames stored as G.711 in the leg's wire law, fixed by the first
        # audio packet (PCMU when the leg has none before its first frame)
        self.raw = encode and settings.store_codec == "g711"
        self.law: int | None = None
        if self.raw:
            encode = False
        self.encoder = (
            _opus.Encoder(
                bitrate=settings.bitrate, complexity=settings.complexity, dtx=settings.dtx
            )
            if encode
            else None
        )
        # codes the frames DTX would leave empty (see Settings.dtx_packet_bytes)
        self.noise_encoder = (
            _opus.Encoder(
                bitrate=ogg.COMFORT_NOISE_BITRATE, dtx=False, complexity=settings.complexity
            )
            if encode and settings.dtx and settings.dtx_packet_bytes
            else None
        )
        self.keep_pcm = keep_pcm
        self._next_index = 0  # next frame index the DSP stage expects (step path)
        self._drained = False
        self.core = (
            _leg.LegCore(
                self.jb,
                self.dtmf,
                self.vad,
                self.encoder,
                self.noise_encoder,
                bitrate=settings.bitrate,
                silence_bitrate=settings.silence_bitrate or 0,
                dtx_bytes=settings.dtx_packet_bytes,
                dtx_max=ogg.DTX_MAX_BYTES,
                keep_pcm=keep_pcm,
                # raw (peak mode): PCMU until the first audio packet says (set_g711_law)
                g711_law=_g711.PCMU if self.raw else g711_law,
            )
            if core
            else None
        )

    def set_paused(self, spans: Sequence[tuple[int, int | None]]) -> None:
        """PCI pause: frames [start, end) of each span are stored as silence (end None:
        paused until further notice), replacing the spans given before. Frames through
        the DSP already (below ``next_index``) keep what they were: a caller starts a
        span at ``next_index`` at the earliest. The closed spans go in the summary as
        ``paused`` and out of its gaps."""
        big = 2**62
        self._mute = [(int(a), big if b is None else int(b)) for a, b in spans]
        self.result.paused = [(a, b - a) for a, b in self._mute if b != big and b > a]
        if self.core is not None:
            self.core.set_mute(self._mute)

    @property
    def next_index(self) -> int:
        """The next frame index the DSP stage expects (frames through it so far)."""
        return self.core.next_index if self.core is not None else self._next_index

    @property
    def packets_ready(self) -> int:
        """Packets (Opus, or G.711 with ``g711_law``) made and not taken yet."""
        n = sum(len(ln) for _, ln in self.result.packets) if self.result.packets else 0
        return n + (self.core.packets if self.core is not None else 0)

    def take_packets(self, n: int | None = None) -> PacketRun:
        """The first ``n`` packets not taken yet (all with None), in frame order; what
        is taken is no longer in ``result.packets``."""
        r = self.result
        if r.packets:  # the step path, or the rest once finish() moved it here
            run = r.opus_run()
            r.packets.clear()
            if n is not None and n < len(run):
                r.packets.append(run[n:].astuple())
                run = run[:n]
            return run
        if self.core is None:
            return PacketRun.checked_by_caller(b"", np.zeros(0, dtype=np.int32))
        data, lengths = self.core.take_packets(-1 if n is None else n)
        return PacketRun.checked_by_caller(data, lengths)

    @property
    def pre_skip(self) -> int:
        return self.encoder.lookahead if self.encoder is not None else 0

    @property
    def store_codec_byte(self) -> int:
        """The AUDIO records' codec byte of this leg (docs/format.md 8.5)."""
        if not self.raw:
            return 1  # records.CODEC_OPUS
        return 3 if self.law == _g711.PCMA else 2  # records.CODEC_PCMA / CODEC_PCMU

    def _detect_law(
        self, data: bytes, offsets: npt.NDArray[np.int64], lengths: npt.NDArray[np.int32]
    ) -> None:
        """Peak mode: the leg's G.711 law from its first PCMU or PCMA packet."""
        ok = np.asarray(lengths) >= 12
        if not ok.any():
            return
        buf = np.frombuffer(data, dtype=np.uint8)
        pts = buf[np.asarray(offsets)[ok] + 1] & 0x7F
        hit = np.flatnonzero((pts == _g711.PCMU) | (pts == _g711.PCMA))
        if len(hit):
            self.law = int(pts[hit[0]])
            if self.core is not None:
                self.core.set_g711_law(self.law)

    def push_rtp(
        self,
        data: bytes,
        offsets: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int32],
        arrival_us: npt.NDArray[np.int64],
    ) -> None:
        if self.raw and self.law is None and self.next_index == 0:
            self._detect_law(data, offsets, lengths)
        if self.core is not None:
            if self.core.push_rtp(data, offsets, lengths, arrival_us):
                self._take_events()
            return
        frames = self.jb.push(data, offsets, lengths, arrival_us)
        if len(frames):
            self._dsp(frames.pcm, int(frames.index[0]))

    def push_batch(
        self, data: bytes, lengths: npt.NDArray[np.int32], arrival_us: npt.NDArray[np.int64]
    ) -> None:
        """``push_rtp`` for packets back to back (an Ingest batch): no offsets needed."""
        if self.raw and self.law is None and self.next_index == 0:
            run = PacketRun(data, lengths)
            self._detect_law(run.data, run.offsets, run.lengths)
        if self.core is not None:
            if self.core.push_batch(data, lengths, arrival_us):
                self._take_events()
            return
        run = PacketRun(data, lengths)
        self.push_rtp(run.data, run.offsets, run.lengths, arrival_us)

    def push_pcm(self, pcm: npt.NDArray[np.int16]) -> None:
        """Samples already on the timeline (WAV legs); a partial last frame is zero-padded."""
        pad = (-len(pcm)) % FRAME_SAMPLES
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        if len(pcm):
            self._frames(pcm.reshape(-1, FRAME_SAMPLES), self.next_index)

    def drain(self, end_us: int | None = None) -> int:
        """Flush the jitter buffer (to its last audio, or filled to end_us); frames so far."""
        if self.jb.stats["packets"] and not self._drained:
            frames = self.jb.flush(end_us)
            if len(frames):
                self._frames(frames.pcm, int(frames.index[0]))
            self._take_rtp_metadata()
        self._drained = True
        return self.next_index

    def finish(self, *, end_us: int | None = None, total_frames: int | None = None) -> LegResult:
        """Drain the jitter buffer and the DSP, padding with silence to total_frames."""
        self.drain(end_us)
        if total_frames is not None and total_frames > self.next_index:
            self._frames(
                np.zeros((total_frames - self.next_index, FRAME_SAMPLES), dtype=np.int16),
                self.next_index,
            )
        self.result.codec = self.store_codec_byte
        if self.core is not None:
            self.core.finish()
            self._take_events()
            self._take_core_result()
            return self.result
        pcm, events = self.dtmf.flush()
        self._after_dsp(pcm, events)
        if self.encoder is not None:
            # One more (silent) packet pushes the encoder's lookahead out, so the
            # last real frame decodes whole; Ogg end-trimming drops the excess.
            self._encode(np.zeros((1, FRAME_SAMPLES), dtype=np.int16), np.zeros(1, dtype=np.uint8))
        return self.result

    def _take_rtp_metadata(self) -> None:
        r = self.result
        r.rtp = dict(self.jb.stats)
        r.gaps = [(int(s), int(n)) for s, n in self.jb.gaps]
        r.unsupported = [(int(s), int(n), int(pt)) for s, n, pt in self.jb.unsupported]
        r.unsupported_payload_types = [int(p) for p in self.jb.unsupported_payload_types]
        r.telephone_events = [
            {
                "digit": e.digit,
                "start_ms": e.start_ms,
                "duration_ms": e.duration_ms,
                "volume_dbm0": -e.volume,
                "source": "rfc4733",
            }
            for e in self.jb.events
        ]

    def _frames(self, pcm: npt.NDArray[np.int16], first_index: int) -> None:
        """Frames on the timeline (the jitter buffer's, WAV input, padding) to the DSP."""
        if self.core is not None:
            if self.core.push_frames(pcm, first_index):
                self._take_events()
        else:
            self._dsp(pcm, first_index)

    def _take_events(self) -> None:
        assert self.core is not None
        self._add_events(self.core.take_events())

    def _take_core_result(self) -> None:
        """The core's counters, kept frames and last packets into the LegResult."""
        assert self.core is not None
        c, r = self.core, self.result
        r.frames, r.voice_frames, r.opus_bytes = c.frames, c.voice_frames, c.opus_bytes
        r.sumsq, r.peak, r.clipped = c.sumsq, c.peak, c.clipped
        if self.keep_pcm:
            r.pcm.append(c.take_pcm())
        if c.packets:
            r.packets.append(c.take_packets())

    # -- the step path (core=False): the same chain, one Python call a step ----------------
    def _dsp(self, pcm: npt.NDArray[np.int16], first_index: int) -> None:
        if first_index != self._next_index:
            raise AssertionError(f"timeline hole: frame {first_index}, expected {self._next_index}")
        self._next_index += len(pcm)
        end = first_index + len(pcm)
        copied = False
        for a, b in self._mute:  # PCI pause: as LegCore._muted
            lo, hi = max(a, first_index), min(b, end)
            if lo < hi:
                if not copied:
                    pcm, copied = np.array(pcm, dtype=np.int16), True
                pcm[lo - first_index : hi - first_index] = 0
        out, events = self.dtmf.process(np.ascontiguousarray(pcm), first_index)
        self._after_dsp(out, events)

    def _add_events(self, events: Sequence[Any]) -> None:
        for e in events:
            self.result.dtmf.append(
                {
                    "digit": e.digit,
                    "start_ms": samples_ms(e.start_sample),
                    "duration_ms": samples_ms(e.end_sample - e.start_sample),
                    "source": "inband",
                    "masked": self.settings.mask_dtmf,
                }
            )

    def _after_dsp(self, pcm: npt.NDArray[np.int16], events: Sequence[Any]) -> None:
        r = self.result
        self._add_events(events)
        if not len(pcm):
            return
        r.frames += len(pcm)
        voice = self.vad.process(pcm)
        r.voice_frames += int(voice.sum())
        rms_dbfs, peak, clipped = _dsp.levels(pcm)
        if rms_dbfs > -math.inf:
            r.sumsq += pcm.size * (32768.0 * 10 ** (rms_dbfs / 20)) ** 2
        r.peak = max(r.peak, peak)
        r.clipped += clipped
        if self.keep_pcm:
            r.pcm.append(pcm.copy())
        if self.encoder is not None:
            self._encode(pcm, voice)
        elif self.g711_law is not None:
            data = _g711.encode(np.ascontiguousarray(pcm).reshape(-1), self.g711_law)
            r.packets.append((data, np.full(len(pcm), FRAME_SAMPLES, dtype=np.int32)))
            r.opus_bytes += len(data)
        elif self.raw:
            self._store_g711(pcm)

    def _store_g711(self, pcm: npt.NDArray[np.int16]) -> None:
        """Peak mode: the frames as G.711, one 160-byte packet per frame."""
        if self.law is None:
            self.law = _g711.PCMU
        self.result.codec = self.store_codec_byte
        data = _g711.encode(np.ascontiguousarray(pcm).reshape(-1), self.law)
        self.result.packets.append((data, np.full(len(pcm), FRAME_SAMPLES, dtype=np.int32)))
        self.result.opus_bytes += len(data)

    def _encode(self, pcm: npt.NDArray[np.int16], voice: npt.NDArray[np.uint8]) -> None:
        """Encode runs of voice / silent frames, each at its bitrate; over paused frames
        with DTX off (as LegCore._encode: the silence coded by the encoder's own real
        packets, never a DTX packet replaced by the noise encoder's)."""
        assert self.encoder is not None
        s = self.settings
        n = len(pcm)
        cuts = (
            set()
            if s.silence_bitrate is None
            else set((np.flatnonzero(np.diff(voice.astype(np.int8))) + 1).tolist())
        )
        muted = np.zeros(n, dtype=np.bool_)
        if s.dtx and (self._mute or self._dtx_held):
            idx = np.arange(self.result.frames - n, self.result.frames)
            for lo, hi in self._mute:
                muted |= (idx >= lo) & (idx < hi)
            cuts.update((np.flatnonzero(np.diff(muted.astype(np.int8))) + 1).tolist())
        bounds = [0, *sorted(cuts), n]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            rate = s.bitrate if s.silence_bitrate is None or voice[a] else s.silence_bitrate
            if self.encoder.bitrate != rate:
                self.encoder.bitrate = rate
            if s.dtx and bool(muted[a]) != self._dtx_held:
                self.encoder.dtx = not muted[a]
                self._dtx_held = bool(muted[a])
            run = PacketRun(*self.encoder.encode_frames(pcm[a:b]))
            if self.noise_encoder is not None:
                # TOC-only DTX packets never leave the pipeline (Settings.dtx_packet_bytes)
                run = ogg.replace_dtx(
                    run, pcm[a:b], self.noise_encoder, self.settings.dtx_packet_bytes
                )
            self.result.packets.append(run.astuple())
            self.result.opus_bytes += len(run.data)


@dataclass
class LegInput:
    name: str
    source: str  # file path, and for captures which flow
    flow: capture.RtpFlow | None = None
    pcm: npt.NDArray[np.int16] | None = None


def parse_inputs(inputs: Sequence[str], legs: Sequence[str] | None = None) -> list[LegInput]:
    """INPUT... as the CLI takes it: one or more captures, or LEG=FILE.wav pairs."""
    if not inputs:
        raise InputError("no input given")
    if all("=" in i for i in inputs):
        out: list[LegInput] = []
        for item in inputs:
            name, _, path = item.partition("=")
            if not name or not path:
                raise InputError(f"expected LEG=FILE.wav, got {item!r}")
            if any(o.name == name for o in out):
                raise InputError(f"leg {name!r} given twice")
            out.append(LegInput(name, path, pcm=wav.read_mono(path)))
        return out
    if any("=" in i for i in inputs):
        raise InputError("give either captures or LEG=FILE.wav pairs, not both")
    flows: list[tuple[str, capture.RtpFlow]] = []
    for path in inputs:
        cap = capture.read_capture(path)
        flows.extend((path, f) for f in cap.flows)
    if not flows:
        raise InputError(f"no RTP streams found in {', '.join(inputs)}")
    flows.sort(key=lambda pf: pf[1].first_us)
    names = list(legs) if legs else list(LEG_NAMES)
    if len(flows) > len(names):
        extra = ", ".join(f.label for _, f in flows[len(names) :])
        raise InputError(
            f"{len(flows)} RTP streams found but {len(names)} legs named "
            f"({', '.join(names)}); name more with --legs (extra: {extra})"
        )
    legs_out: list[LegInput] = []
    for name, (path, flow) in zip(names, flows, strict=False):
        capture.check_audio(flow)
        legs_out.append(LegInput(name, f"{path} {flow.label}", flow=flow))
    return legs_out


@dataclass
class CallResult:
    legs: list[LegResult]
    pre_skip: int
    frames: int
    start_us: int | None = None  # wall-clock time of frame 0 (captures); None for WAV legs

    @property
    def seconds(self) -> float:
        return frames_seconds(self.frames)


def run_call(
    inputs: Sequence[LegInput],
    settings: Settings,
    *,
    encode: bool = True,
    keep_pcm: bool = False,
    batch_packets: int = 500,
) -> CallResult:
    """Run every leg through its pipeline on one timeline; legs end with the same frame count."""
    flows = [i.flow for i in inputs if i.flow is not None]
    # The call starts with its first captured sample (capture.first_sample_us)
    # and ends with the last audio of its longest leg: each leg's jitter buffer
    # is flushed to its own end, then the shorter legs are padded with silence.
    # (Not the last arrival: a sender may send its last partial packet early.)
    start_us = min(f.first_sample_us() for f in flows) if flows else 0
    pipes = []
    for leg in inputs:
        pipe = LegPipeline(
            leg.name,
            leg.source,
            settings,
            call_start_us=start_us,
            event_payload_types=leg.flow.event_payload_types() if leg.flow else (),
            encode=encode,
            keep_pcm=keep_pcm,
        )
        if leg.flow is not None:
            (data, offsets, lengths), arrival = leg.flow.batch()
            for lo in range(0, len(lengths), batch_packets):
                hi = lo + batch_packets
                pipe.push_rtp(data, offsets[lo:hi], lengths[lo:hi], arrival[lo:hi])
        elif leg.pcm is not None:
            pipe.push_pcm(leg.pcm)
        pipes.append(pipe)
    # Legs of different lengths are padded with silence to the longest.
    total = max((p.drain() for p in pipes), default=0)
    results = [p.finish(total_frames=total) for p in pipes]
    if any(r.frames != total for r in results):
        raise AssertionError(f"legs differ in length: {[r.frames for r in results]}")
    return CallResult(
        results, pipes[0].pre_skip if pipes else 0, total, start_us if flows else None
    )


def write_ogg(path: str | Path, call: CallResult, comments: dict[str, str] | None = None) -> int:
    """Dual-track (or mono) Ogg Opus from the legs' packets, with no re-encoding."""
    legs = [r.opus_run() for r in call.legs]
    ogg.write_call(path, legs, pre_skip=call.pre_skip, frames=call.frames, comments=comments)
    return Path(path).stat().st_size


def write_wav(path: str | Path, call: CallResult) -> int:
    return wav.write(path, [r.pcm_all() for r in call.legs])
