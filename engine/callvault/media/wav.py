"""WAV files in and out: PCM16 only, resampled to 8 kHz on the way in."""

from __future__ import annotations

import wave
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt

from callvault.errors import InputError
from callvault.timeline import SAMPLE_RATE

RATE = SAMPLE_RATE  # WAV legs are resampled to the timeline's rate (docs/format.md 1)


def resample(pcm: npt.NDArray[np.int16], rate: int, to: int = RATE) -> npt.NDArray[np.int16]:
    """Polyphase resampling (scipy) of int16 mono audio, clipped back to int16."""
    if rate == to:
        return pcm
    from scipy.signal import resample_poly

    g = gcd(rate, to)
    out = resample_poly(pcm.astype(np.float64), to // g, rate // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def read_mono(path: str | Path) -> npt.NDArray[np.int16]:
    """A PCM16 WAV as 8 kHz mono int16; stereo is averaged, other rates resampled."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except FileNotFoundError as e:
        raise InputError(f"cannot read {path}: no such file") from e
    except (wave.Error, EOFError) as e:
        raise InputError(f"{path} is not a PCM WAV file ({e})") from e
    if width != 2:
        raise InputError(f"{path} has {8 * width}-bit samples; callvault reads 16-bit PCM WAV")
    pcm = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        pcm = pcm[: len(pcm) - len(pcm) % channels].reshape(-1, channels)
        pcm = np.rint(pcm.astype(np.float64).mean(axis=1)).astype(np.int16)
    return resample(pcm.astype(np.int16), rate)


def write(path: str | Path, channels: list[npt.NDArray[np.int16]], rate: int = RATE) -> int:
    """Write int16 channels of equal length interleaved; returns bytes written."""
    data = np.stack(channels, axis=1).astype("<i2") if len(channels) > 1 else channels[0]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(data).tobytes())
    return Path(path).stat().st_size
