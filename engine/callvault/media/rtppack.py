"""Build RTP packets (RFC 3550 section 5.1) and packet batches.

Used to write sample captures, by the sidecar's tests and by the test suite;
the hot path parses packets in ext/_rtp.pyx and never uses this module.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from callvault.media.packets import PacketRun
from callvault.rtpdefs import PT_CN, PT_PCMA, PT_PCMU

__all__ = [
    "PT_CN",
    "PT_PCMA",
    "PT_PCMU",
    "PT_TELEPHONE_EVENT",
    "RTP_VERSION",
    "Batch",
    "build_packet",
    "pack_batch",
    "telephone_event",
]

RTP_VERSION = 2
PT_TELEPHONE_EVENT = 101  # RFC 4733; dynamic, 101 is the common choice of PBXs

Batch = tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.int32]]


def build_packet(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    *,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """One RTP packet. ``extension`` is (profile, data) with len(data) % 4 == 0;
    ``padding`` adds that many bytes (last one holding the count)."""
    if not 0 <= pt < 128:
        raise ValueError(f"payload type {pt} out of range 0..127")
    if len(csrcs) > 15:
        raise ValueError("at most 15 CSRCs")
    first = (RTP_VERSION << 6) | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrcs)
    out = bytearray(
        struct.pack(
            "!BBHII",
            first,
            (0x80 if marker else 0) | pt,
            seq & 0xFFFF,
            ts & 0xFFFFFFFF,
            ssrc & 0xFFFFFFFF,
        )
    )
    for c in csrcs:
        out += struct.pack("!I", c & 0xFFFFFFFF)
    if extension is not None:
        profile, data = extension
        if len(data) % 4:
            raise ValueError("header extension length must be a multiple of 4 bytes")
        out += struct.pack("!HH", profile, len(data) // 4) + data
    out += payload
    if padding:
        if not 1 <= padding <= 255:
            raise ValueError("padding must be 1..255 bytes")
        out += bytes(padding - 1) + bytes([padding])
    return bytes(out)


def telephone_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """RFC 4733 section 2.3 payload: event, E bit, volume (-dBm0), duration (samples)."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def pack_batch(packets: Sequence[bytes]) -> Batch:
    """Concatenate packets into one buffer with their offsets and lengths (the jitter
    buffer's arguments; ``PacketRun.of`` keeps them together)."""
    run = PacketRun.of(packets)
    return run.data, run.offsets, run.lengths
