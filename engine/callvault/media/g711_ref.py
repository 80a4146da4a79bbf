"""Pure-Python reference of ITU-T G.711 companding: the differential twin of ext/g711.h.

Written from the recommendation's tables of decision and quantized values
(G.711 Table 1a for A-law, Table 2a for mu-law), not from lookup tables or
bit tricks: each law is a list of 128 magnitude intervals built from
segment/step arithmetic, an encoder finds the interval of a sample, a
decoder returns the interval's quantized value (its midpoint).

Units. G.711 states A-law on a 13-bit scale (magnitudes 0..4096) and mu-law
on a 14-bit scale (magnitudes 0..8159 plus sign). callvault's PCM is 16-bit,
so A-law values are scaled by 8 and mu-law values by 4.

Mapping a 16-bit sample to a magnitude (G.711 does not define it; these are
the conventions of ext/g711.h, stated here so the twins agree on purpose):
- mu-law: sign-magnitude, magnitude = |v| (so -32768 is clipped like +32767);
- A-law: magnitude of a negative v is |v| - 1 = ~v (a mirror about -0.5, so
  that -32768..-1 mirrors 0..32767 exactly).
A magnitude that falls exactly on a decision value belongs to the upper
interval.

Character signals. A-law: bit 1 (MSB) is the polarity (1 = positive),
then even bits are inverted (XOR 0x55). mu-law: polarity bit 1 = positive,
the seven magnitude bits are inverted. Decoding mu-law 0x7F ("negative
zero") gives 0, which encodes back as 0xFF.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt

PCMU = 0  # RTP static payload type of mu-law (RFC 3551)
PCMA = 8  # RTP static payload type of A-law (RFC 3551)

_SEGMENTS = 8  # segments per polarity, 16 intervals each
_STEPS = 16


def _mulaw_intervals() -> tuple[list[int], list[int]]:
    """Decision values (lower bounds of intervals 1..127) and quantized values
    (intervals 0..127) of G.711 mu-law on the 14-bit scale.

    Segment s (0..7) starts at 2**(s+5) - 33 and has 16 steps of 2**(s+1);
    segment 0 starts at -1, so its first interval [0, 1) is the half-width
    interval around 0 (quantized value 0)."""
    lower: list[int] = []
    values: list[int] = []
    for s in range(_SEGMENTS):
        start = (1 << (s + 5)) - 33
        step = 1 << (s + 1)
        for m in range(_STEPS):
            lower.append(start + m * step)
            values.append(start + m * step + step // 2)
    lower[0] = 0  # interval 0 is [0, 1): its lower bound is zero, not -1
    return lower[1:], values


def _alaw_intervals() -> tuple[list[int], list[int]]:
    """Decision values and quantized values of G.711 A-law on the 13-bit scale.

    Segments 0 and 1 are both 16 steps of 2 (0..32, 32..64: the linear
    part), segment s >= 2 starts at 2**(s+4) with 16 steps of 2**s."""
    lower: list[int] = []
    values: list[int] = []
    for s in range(_SEGMENTS):
        start = 0 if s == 0 else 1 << (s + 4)
        step = 2 if s < 2 else 1 << s
        for m in range(_STEPS):
            lower.append(start + m * step)
            values.append(start + m * step + step // 2)
    return lower[1:], values


_MU_DECISION, _MU_VALUE = _mulaw_intervals()
_A_DECISION, _A_VALUE = _alaw_intervals()
_MU_SCALE = 4  # 16-bit / 14-bit
_A_SCALE = 8  # 16-bit / 13-bit
# decision values on the 16-bit scale: magnitude / 4 >= d  <=>  magnitude >= 4 d
_MU_DECISION_16 = [d * _MU_SCALE for d in _MU_DECISION]
_A_DECISION_16 = [d * _A_SCALE for d in _A_DECISION]


def _check_law(law: int) -> None:
    if law not in (PCMU, PCMA):
        raise ValueError(f"unknown G.711 law {law}: expected 0 (PCMU) or 8 (PCMA)")


def decode_sample(code: int, law: int) -> int:
    """One G.711 character (0..255) to a 16-bit sample."""
    _check_law(law)
    if law == PCMU:
        positive = bool(code & 0x80)
        n = ~code & 0x7F
        magnitude = _MU_VALUE[n] * _MU_SCALE
    else:
        plain = code ^ 0x55
        positive = bool(plain & 0x80)
        n = plain & 0x7F
        magnitude = _A_VALUE[n] * _A_SCALE
    return magnitude if positive else -magnitude


def encode_sample(sample: int, law: int) -> int:
    """One 16-bit sample (-32768..32767) to a G.711 character."""
    _check_law(law)
    if not -32768 <= sample <= 32767:
        raise ValueError(f"sample {sample} outside int16")
    positive = sample >= 0
    if law == PCMU:
        magnitude = sample if positive else -sample
        # interval index = number of decision values <= magnitude
        n = bisect.bisect_right(_MU_DECISION_16, magnitude)
        n = min(n, 127)
        return (0x80 if positive else 0x00) | (~n & 0x7F)
    magnitude = sample if positive else -sample - 1
    n = bisect.bisect_right(_A_DECISION_16, magnitude)
    n = min(n, 127)
    return ((0x80 if positive else 0x00) | n) ^ 0x55


def decode(data: bytes, law: int) -> npt.NDArray[np.int16]:
    """G.711 bytes to int16 PCM (same contract as callvault._g711.decode)."""
    _check_law(law)
    return np.array([decode_sample(b, law) for b in data], dtype=np.int16)


def encode(pcm: npt.NDArray[np.int16], law: int) -> bytes:
    """int16 PCM to G.711 bytes (same contract as callvault._g711.encode)."""
    _check_law(law)
    return bytes(encode_sample(int(v), law) for v in np.asarray(pcm, dtype=np.int16))
