"""An assessor's check for DTMF left in stored audio (`callvault scan`, PCI).

The live detector (ext/_dsp.pyx ``DtmfDetector``) decides digits by ITU-T Q.24's
reception limits; masking zeroes what it detected. This scan looks for what it could
have missed: tone pairs quieter, shorter, more twisted and less clean than a digit it
operates on. Goertzel-equivalent filters (a sliding DFT at the 8 exact DTMF
frequencies: each block's value is the Goertzel filter's) over blocks of ``BLOCK``
samples (20 ms) every ``HOP`` samples (5 ms); a block carries a tone pair when all of:

======================  ====================  =========================
test                    scan (this module)    live detector (_dsp)
======================  ====================  =========================
level of each tone      >= -45 dBm0           >= -35 dBm0
twist (either way)      <= 12 dB              <= 8 dB normal, 4 reverse
peak within its group   >= 3 dB over others   >= 3 dB over others
tones / block energy    >= 0.6                >= 0.7
duration                >= 25 ms (2 blocks)   >= 40 ms (3 blocks of 10)
======================  ====================  =========================

(No frequency-deviation test: a 20 ms block's filters pass +-25 Hz, wider than
Q.24's 3.5 % non-operate limit at the low group.) Consecutive blocks with the same
pair (gaps of up to ``BRIDGE`` blocks bridged) make one hit: where (seconds from
the call's start), how long, the two frequencies and their levels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
FREQUENCIES = (697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0)
BLOCK = 160  # 20 ms
HOP = 40  # 5 ms
MIN_DBM0 = -45.0
MAX_TWIST_DB = 12.0
REL_PEAK_DB = 3.0
MIN_RATIO = 0.6
MIN_BLOCKS = 2  # 160 + 40 samples: 25 ms
BRIDGE = 1
ZERO_DBM0 = 32768.0 * 10 ** (-3.14 / 20)  # amplitude of a 0 dBm0 sine (ext/_dsp.pyx)
_CHUNK = 1 << 20  # samples per pass (memory stays small for hour-long calls)


@dataclass(frozen=True)
class Hit:
    """DTMF-like tone energy on one leg."""

    leg: str
    start_s: float
    duration_ms: int
    low_hz: float
    high_hz: float
    low_dbm0: float
    high_dbm0: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _amplitudes(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Per block (every HOP samples): the 8 tones' amplitudes (8, n) and mean power."""
    n = len(x)
    if n < BLOCK:
        return np.zeros((8, 0)), np.zeros(0)
    starts = np.arange(0, n - BLOCK + 1, HOP)
    amps = np.empty((8, len(starts)))
    power = np.empty(len(starts))
    # chunks of blocks, each with its own phase origin (a block's magnitude does not
    # depend on it), so the sums stay small and exact enough
    per = _CHUNK // HOP
    for lo in range(0, len(starts), per):
        s = starts[lo : lo + per]
        a, b = int(s[0]), int(s[-1]) + BLOCK
        seg = x[a:b]
        rel = s - a
        t = np.arange(b - a)
        c2 = np.concatenate(([0.0], np.cumsum(seg * seg)))
        power[lo : lo + len(s)] = (c2[rel + BLOCK] - c2[rel]) / BLOCK
        for k, f in enumerate(FREQUENCIES):
            w = 2 * math.pi * f / SAMPLE_RATE
            c = np.concatenate(([0j], np.cumsum(seg * np.exp(-1j * w * t))))
            amps[k, lo : lo + len(s)] = 2 * np.abs(c[rel + BLOCK] - c[rel]) / BLOCK
    return amps, power


def scan_leg(leg: str, pcm: npt.NDArray[np.int16]) -> list[Hit]:
    """The DTMF-like tone pairs in one leg's 8 kHz PCM (see the module docstring)."""
    amps, power = _amplitudes(np.asarray(pcm, dtype=np.float64).reshape(-1))
    if not amps.shape[1]:
        return []
    r = np.argmax(amps[:4], axis=0)
    c = 4 + np.argmax(amps[4:], axis=0)
    cols = np.arange(amps.shape[1])
    ar, ac = amps[r, cols], amps[c, cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = 20 * np.log10(ar / ZERO_DBM0)
        lc = 20 * np.log10(ac / ZERO_DBM0)
    peak = 10 ** (REL_PEAK_DB / 20)
    low_others = np.sort(amps[:4], axis=0)[-2]
    high_others = np.sort(amps[4:], axis=0)[-2]
    with np.errstate(invalid="ignore"):  # -inf - -inf in silence: not a tone
        ok = (
            (lr >= MIN_DBM0)
            & (lc >= MIN_DBM0)
            & (np.abs(lr - lc) <= MAX_TWIST_DB)
            & (ar >= peak * low_others)
            & (ac >= peak * high_others)
            & ((ar * ar + ac * ac) / 2 >= MIN_RATIO * power)
        )
    pair = np.where(ok, r * 8 + c, -1)
    hits: list[Hit] = []
    i, n = 0, len(pair)
    while i < n:
        if pair[i] < 0:
            i += 1
            continue
        p, j, last, blocks = pair[i], i + 1, i, 1
        while j < n and j - last <= BRIDGE + 1:
            if pair[j] == p:
                last, blocks = j, blocks + 1
            elif pair[j] >= 0:
                break
            j += 1
        if blocks >= MIN_BLOCKS:
            run = slice(i, last + 1)
            mask = pair[run] == p
            hits.append(
                Hit(
                    leg=leg,
                    start_s=round(i * HOP / SAMPLE_RATE, 3),
                    duration_ms=int(((last - i) * HOP + BLOCK) * 1000 // SAMPLE_RATE),
                    low_hz=FREQUENCIES[int(r[i])],
                    high_hz=FREQUENCIES[int(c[i])],
                    low_dbm0=round(float(lr[run][mask].max()), 1),
                    high_dbm0=round(float(lc[run][mask].max()), 1),
                )
            )
        i = last + 1
    return hits
