"""PCM legs (WAV inputs) as the RTP a live call would bring: 20 ms G.711 packets in real time.

The production path for ``LEG=FILE.wav`` inputs that must go through a jitter
buffer (a remote import streams them to the server's ingest). Nothing is
impaired: no jitter, loss or reordering (sample.py simulates those for sample
calls and tests).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from callvault import _g711
from callvault.media.rtppack import PT_PCMA, PT_PCMU, build_packet
from callvault.timeline import FRAME_SAMPLES, FRAME_US

__all__ = ["packetize"]


def packetize(
    pcm: npt.NDArray[np.int16],
    *,
    start_us: int,
    ssrc: int,
    seed: int = 0,
    law: int = PT_PCMU,
) -> list[tuple[int, bytes]]:
    """``(arrival_us, packet)`` for 8 kHz mono ``pcm``: one G.711 packet per 20 ms frame.

    Frame n of the leg is the call timeline's frame n for a call starting at
    ``start_us``: its packet arrives when its last sample is in, at
    ``start_us + (n + 1) * 20 ms`` (docs/format.md section 1), so the jitter
    buffer places it at samples [160 n, 160 n + 160). A partial last frame is
    zero-padded, as a local import pads it. The first packet has the marker
    bit; the initial sequence number and timestamp are random (RFC 3550 5.1),
    drawn from ``seed`` so that the same input gives the same packets.
    """
    if law not in (PT_PCMU, PT_PCMA):
        raise ValueError(f"law must be PCMU ({PT_PCMU}) or PCMA ({PT_PCMA}), not {law}")
    pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
    pad = (-len(pcm)) % FRAME_SAMPLES
    if pad:
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    payload = _g711.encode(np.ascontiguousarray(pcm), law)
    rng = np.random.default_rng(seed)
    seq0, ts0 = int(rng.integers(0, 65536)), int(rng.integers(0, 2**32))
    out: list[tuple[int, bytes]] = []
    for n in range(len(pcm) // FRAME_SAMPLES):
        lo = n * FRAME_SAMPLES
        packet = build_packet(
            law, seq0 + n, ts0 + lo, ssrc, payload[lo : lo + FRAME_SAMPLES], marker=n == 0
        )
        out.append((start_us + (n + 1) * FRAME_US, packet))
    return out
