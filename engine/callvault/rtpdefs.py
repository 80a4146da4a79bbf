"""What the compiled RTP module and its pure-Python twin share (docs/format.md 1, 2).

``callvault._rtp`` (ext/_rtp.pyx) and ``callvault.media.jitter_ref`` both
import this base module: the frame kinds, the malformed-packet reasons and the
stat names, the result containers (Frames, ParsedPackets, TelephoneEvent), and
the batch and option checks whose error messages both raise. It imports only
numpy and callvault.timeline, so the extension never loads its twin (or anything
above ext/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from callvault.timeline import FRAMES_PER_SECOND

# Frame kinds (docs/format.md 1).
FRAME_AUDIO = 0  # the frame holds received audio (missing samples in it are zeros)
FRAME_LOST = 1  # filled because packets were lost (a sequence gap)
FRAME_SILENCE = 2  # the sender was silent: DTX gap, comfort noise, event, before the first packet
FRAME_UNSUPPORTED = 3  # the sender sent audio in a codec no decoder handles (zeros, not silence)

# Reasons a packet is malformed; parse() reports 1 + the index (0 = valid).
MALFORMED_REASONS: tuple[str, ...] = (
    "too_short",  # shorter than the 12-byte fixed header
    "bad_version",  # version field is not 2
    "bad_csrc",  # the CSRC list runs past the end of the packet
    "bad_extension",  # the header extension runs past the end of the packet
    "bad_padding",  # padding count 0 or larger than what follows the header
    "empty_payload",  # nothing left after header and padding
    "bad_event",  # RFC 4733 payload shorter than 4 bytes (push only, parse never reports it)
)

# RTP payload types the jitter buffer knows (RFC 3551, RFC 3389).
PT_PCMU = 0  # RFC 3551 mu-law
PT_PCMA = 8  # RFC 3551 A-law
PT_CN = 13  # RFC 3389 comfort noise

# What callvault records (the jitter buffer's decoders), in the words of its messages.
RECORDED_CODECS = "G.711 (PCMU, PT 0 / PCMA, PT 8)"

# How long an RTP packet of a payload type no decoder handles lasts on the
# timeline (the jitter buffer marks that span "unsupported codec" rather than
# silence or loss): RTP clock ticks per payload byte as (numerator, denominator)
# for the RFC 3551 static types with a fixed bit rate at an 8000 Hz RTP clock;
# any other type lasts one frame a packet.
UNSUPPORTED_TICKS_PER_BYTE: dict[int, tuple[int, int]] = {
    3: (160, 33),  # GSM 06.10: 33 bytes per 20 ms
    4: (10, 1),  # G.723.1 at 6.3 kbit/s: 24 bytes per 30 ms
    5: (2, 1),  # DVI4 at 8 kHz: 4 bits a sample
    9: (1, 1),  # G.722: 64 kbit/s, RTP clock 8000 Hz by RFC 3551's historical rule
    15: (4, 1),  # G.728: 16 kbit/s
    18: (8, 1),  # G.729: 10 bytes per 10 ms
}

_DIGITS = "0123456789*#ABCD"  # RFC 4733 3.2: events 0..15


class Frames:
    """Frames that became final: consecutive indexes on the call timeline."""

    __slots__ = ("_index", "_pcm", "_kind")

    def __init__(
        self,
        index: npt.NDArray[np.int64],
        pcm: npt.NDArray[np.int16],
        kind: npt.NDArray[np.uint8],
    ) -> None:
        self._index = index
        self._pcm = pcm
        self._kind = kind

    @property
    def index(self) -> npt.NDArray[np.int64]:
        return self._index

    @property
    def pcm(self) -> npt.NDArray[np.int16]:
        return self._pcm

    @property
    def kind(self) -> npt.NDArray[np.uint8]:
        return self._kind

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __repr__(self) -> str:
        return f"Frames(n={len(self)}, first={int(self._index[0]) if len(self) else None})"


@dataclass(frozen=True)
class TelephoneEvent:
    """An RFC 4733 event seen on the leg; times on the call timeline."""

    event: int
    digit: str
    start_ms: int
    duration_ms: int
    volume: int


class ParsedPackets:
    """Result of :func:`parse`: one entry per packet."""

    __slots__ = (
        "valid",
        "reason",
        "marker",
        "pt",
        "seq",
        "ts",
        "ssrc",
        "payload_offset",
        "payload_length",
    )

    def __init__(self, n: int) -> None:
        self.valid = np.zeros(n, dtype=np.bool_)
        self.reason = np.zeros(n, dtype=np.uint8)
        self.marker = np.zeros(n, dtype=np.bool_)
        self.pt = np.zeros(n, dtype=np.uint8)
        self.seq = np.zeros(n, dtype=np.uint16)
        self.ts = np.zeros(n, dtype=np.uint32)
        self.ssrc = np.zeros(n, dtype=np.uint32)
        self.payload_offset = np.zeros(n, dtype=np.int64)
        self.payload_length = np.zeros(n, dtype=np.int32)

    def __len__(self) -> int:
        return int(self.valid.shape[0])


def _as_int_array(x: Any, dtype: type[np.integer[Any]], name: str) -> npt.NDArray[Any]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got {arr.ndim} dimensions")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_batch(
    data: bytes | bytearray | memoryview,
    offsets: Any,
    lengths: Any,
    arrival_us: Any | None = None,
    *,
    bounds: bool = True,
) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64] | None]:
    """Validate a batch (buffer + per-packet arrays); raise ValueError saying what is wrong.

    ``bounds=False`` skips the per-packet offset/length checks (the C twin does them in
    its own loop and calls back here for the message when one fails)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"data must be bytes, bytearray or memoryview, got {type(data).__name__}")
    buf = bytes(data)
    off = _as_int_array(offsets, np.int64, "offsets")
    ln = _as_int_array(lengths, np.int32, "lengths")
    if off.shape[0] != ln.shape[0]:
        raise ValueError(f"offsets has {off.shape[0]} entries but lengths has {ln.shape[0]}")
    arr: npt.NDArray[np.int64] | None = None
    if arrival_us is not None:
        arr = _as_int_array(arrival_us, np.int64, "arrival_us")
        if arr.shape[0] != off.shape[0]:
            raise ValueError(
                f"arrival_us has {arr.shape[0]} entries but offsets has {off.shape[0]}"
            )
    if bounds and off.shape[0]:
        if int(off.min()) < 0:
            i = int(np.flatnonzero(off < 0)[0])
            raise ValueError(f"packet {i}: negative offset {int(off[i])}")
        if int(ln.min()) < 0:
            i = int(np.flatnonzero(ln < 0)[0])
            raise ValueError(f"packet {i}: negative length {int(ln[i])}")
        ends = off + ln.astype(np.int64)
        if int(ends.max()) > len(buf):
            i = int(np.argmax(ends > len(buf)))
            raise ValueError(
                f"packet {i}: offset {int(off[i])} + length {int(ln[i])} runs past the end "
                f"of the {len(buf)}-byte buffer"
            )
    return buf, off, ln, arr


STAT_KEYS: tuple[str, ...] = (
    "packets",
    "bytes",
    "accepted",
    "audio_packets",
    "comfort_noise_packets",
    "telephone_event_packets",
    "malformed",
    *(f"malformed_{r}" for r in MALFORMED_REASONS),
    "duplicates",
    "late",
    "unsupported_payload_type",  # packets of a payload type no decoder handles (any fate)
    "stale_ssrc",
    "inconsistent",
    "overlap",
    "late_partial",
    "marker_packets",
    "frames",
    "audio_frames",
    "lost_frames",
    "silence_frames",
    "partial_frames",
    "ssrc_changes",
    "payload_type_changes",
    "resets",
    "drift_adjustments",
    "drift_dropped_samples",
    "anchor_adjustments",
    # timeline bounds (ext/_rtp.pyx "Bounds"): dropped, each a drop reason
    "timestamp_jump",  # span beyond the lead of its arrival, or a jump never confirmed
    "event_span",  # an RFC 4733 event whose span ends beyond the lead of its arrival
    "unconfirmed_ssrc",  # a new SSRC while the stream was live, never confirmed
    "unsupported_packets",  # accepted packets of an unsupported payload type
    "unsupported_frames",  # FRAME_UNSUPPORTED frames
)

# Stats that are reasons a packet was dropped (each packet is accepted or has one).
DROP_KEYS: tuple[str, ...] = (
    "malformed",
    "duplicates",
    "late",
    "stale_ssrc",
    "inconsistent",
    "overlap",
    "timestamp_jump",
    "event_span",
    "unconfirmed_ssrc",
)


def event_digit(event: int) -> str:
    """The DTMF symbol of an RFC 4733 event code (4733 3.2), or the code for other events."""
    return _DIGITS[event] if event < 16 else str(event)


def check_options(
    window_ms: int, fill: str, event_payload_types: Sequence[int], clock_rate: int
) -> None:
    """Validate JitterBuffer options; raise ValueError saying what is wrong."""
    if not 0 <= window_ms <= 10_000:
        raise ValueError(f"window_ms must be 0..10000, got {window_ms}")
    if fill not in ("silence", "conceal"):
        raise ValueError(f"fill must be 'silence' or 'conceal', got {fill!r}")
    if clock_rate <= 0 or clock_rate % FRAMES_PER_SECOND:
        raise ValueError(f"clock_rate must be a positive multiple of 50 Hz, got {clock_rate}")
    for p in event_payload_types:
        if not 0 <= p <= 127:
            raise ValueError(f"event payload type {p} out of range 0..127")
        if p in (PT_PCMU, PT_PCMA, PT_CN):
            raise ValueError(f"event payload type {p} is reserved for PCMU, PCMA or CN")
