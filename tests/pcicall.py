"""A call for the PCI tests: a dialogue whose agent leg carries in-band DTMF digits
(tones in the audio, as a caller keys a card number) and whose customer leg sends
RFC 4733 digits (events, never audio), as a pcap capture or WAV legs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from callvault.media import sample
from callvault.media.scan import FREQUENCIES, ZERO_DBM0
from callvault.rtpdefs import PT_PCMA, PT_PCMU

SECONDS = 10.0
# (at seconds, digit, ms, dBm0 per tone): in the agent's audio
INBAND = (
    (2.0, "4", 100, -12.0),
    (2.4, "1", 80, -16.0),
    (6.0, "9", 90, -20.0),
    (6.4, "#", 120, -10.0),
)
RFC4733 = ((4.0, "7"), (4.5, "3"))  # on the customer leg
KEYS = "123A456B789C*0#D"


def pair(digit: str) -> tuple[float, float]:
    i = KEYS.index(digit)
    return FREQUENCIES[i // 4], FREQUENCIES[4 + i % 4]


def tone(
    digit: str, ms: float, dbm0: float, high_dbm0: float | None = None
) -> npt.NDArray[np.float64]:
    """The digit's two tones, ``ms`` long, each at ``dbm0`` (the high one at
    ``high_dbm0`` when given: twist)."""
    lo, hi = pair(digit)
    t = np.arange(int(ms * 8)) / 8000
    a = ZERO_DBM0 * 10 ** (dbm0 / 20)
    b = a if high_dbm0 is None else ZERO_DBM0 * 10 ** (high_dbm0 / 20)
    return a * np.sin(2 * np.pi * lo * t) + b * np.sin(2 * np.pi * hi * t)


def legs(seconds: float = SECONDS) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """(agent, customer) PCM: the dialogue, the agent's in-band digits laid in place of
    whatever was there."""
    agent, customer = sample.dialogue(seconds)
    a = agent.astype(np.float64)
    for at, d, ms, db in INBAND:
        s = int(at * 8000)
        x = tone(d, ms, db)
        a[s : s + len(x)] = x
    return np.clip(np.rint(a), -32768, 32767).astype(np.int16), customer


def write_capture(path: Path, seconds: float = SECONDS) -> Path:
    agent, customer = legs(seconds)
    sample.write_capture(
        path,
        [
            (agent, sample.LegPlan(law=PT_PCMU, ssrc=0x11, jitter_ms=3)),
            (
                customer,
                sample.LegPlan(
                    law=PT_PCMA,
                    ssrc=0x22,
                    jitter_ms=3,
                    dtmf=RFC4733,
                    src=("10.0.0.2", 50002),
                    dst=("10.0.0.1", 40002),
                ),
            ),
        ],
    )
    return path
