"""Shared test helpers for audio: speech, noisy telephone lines, PESQ, external decoders.

Generic on purpose (other test modules import it):

* :func:`speech` - espeak-ng speech resampled to 8 kHz int16 (sox), cached.
* :func:`dialogue` - two legs taking turns, each silent while the other talks.
* :func:`noise`, :func:`noisy_line` - white/pink noise at a dBFS level, and a
  line model: noise added, then a G.711 mu-law round trip.
* :func:`energy_vad` - a simple frame-energy VAD with hangover (a test
  stand-in, not the production VAD of callvault._dsp).
* :func:`pesq_nb` - PESQ-NB (ITU-T P.862) averaged over windows of <= 30 s
  (the ``pesq`` package crashes on long inputs).
* :func:`decode_opusdec`, :func:`decode_ffmpeg` - decode a file with the real
  tools to int16 (n, channels) at a chosen rate.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from callvault import _g711

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
Pcm = npt.NDArray[np.int16]


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@functools.lru_cache(maxsize=64)
def _speech_cached(text: str, voice: str, speed: int, pitch: int) -> bytes:
    tts = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    raw = subprocess.run(
        [
            "sox",
            "-D",
            "-t",
            "wav",
            "-",
            "-r",
            str(RATE),
            "-c",
            "1",
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            "-L",
            "-",
        ],
        input=tts,
        check=True,
        capture_output=True,
    ).stdout
    return raw


def speech(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Pcm:
    """espeak-ng speaking ``text``, as 8 kHz mono int16 (resampled by sox)."""
    return np.frombuffer(_speech_cached(text, voice, speed, pitch), dtype="<i2").astype(np.int16)


SENTENCES = (
    "Thank you for calling. How can I help you today?",
    "Hello, I have a question about my last invoice, the amount looks wrong.",
    "I am sorry to hear that. Could you give me your account number please?",
    "Sure, it is four five seven, two nine one, eight three.",
    "Thank you. I can see a charge of forty two pounds from the twelfth of March.",
    "That is the one. I never ordered that service and I want it removed.",
    "I understand. I will raise a refund request, it takes about five working days.",
    "Five days is fine. Will I get an email to confirm the refund?",
    "Yes, you will receive a confirmation email within the next hour.",
    "Great, thank you very much for your help this morning.",
    "You are welcome. Is there anything else I can do for you today?",
    "No, that is everything. Have a nice day, goodbye.",
)


def dialogue(
    seconds: float = 60.0,
    voices: tuple[str, str] = ("en-us", "en-gb-x-rp"),
    pitches: tuple[int, int] = (35, 65),
    gap: float = 0.6,
) -> tuple[Pcm, Pcm]:
    """Two legs (A, B) of a turn-taking dialogue, ``seconds`` long, same length.

    Turns alternate A, B, A, ...; while one leg talks the other is digital
    silence (add a line with :func:`noisy_line`). Turns are separated by ``gap``.
    """
    n = int(seconds * RATE)
    a = np.zeros(n, dtype=np.int16)
    b = np.zeros(n, dtype=np.int16)
    pos = int(0.3 * RATE)
    turn = 0
    while True:
        who = turn % 2
        s = speech(SENTENCES[turn % len(SENTENCES)], voices[who], 160, pitches[who])
        if pos + len(s) > n:
            break
        (a if who == 0 else b)[pos : pos + len(s)] = s
        pos += len(s) + int(gap * RATE)
        turn += 1
    return a, b


def noise(n: int, dbfs: float, color: str = "pink", seed: int = 0) -> npt.NDArray[np.float64]:
    """White or pink (1/f power) Gaussian noise with RMS at ``dbfs`` (0 dBFS = 32768 RMS)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n)
    if color == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        w = np.fft.irfft(spec / np.sqrt(f), n)
    elif color != "white":
        raise ValueError(f"unknown noise colour {color!r}")
    w /= np.sqrt(np.mean(w**2))
    return w * 32768.0 * 10 ** (dbfs / 20)


def mulaw_roundtrip(pcm: Pcm) -> Pcm:
    """G.711 mu-law encode + decode (what a PSTN leg does to the audio)."""
    return _g711.decode(_g711.encode(np.ascontiguousarray(pcm, np.int16), _g711.PCMU), _g711.PCMU)


def noisy_line(pcm: Pcm, noise_dbfs: float = -48.0, color: str = "pink", seed: int = 0) -> Pcm:
    """``pcm`` plus line noise at ``noise_dbfs``, through a G.711 mu-law round trip."""
    x = pcm.astype(np.float64) + noise(len(pcm), noise_dbfs, color, seed)
    return mulaw_roundtrip(np.clip(np.round(x), -32768, 32767).astype(np.int16))


def frames(pcm: Pcm, frame: int = FRAME) -> Pcm:
    """Cut ``pcm`` into (n, frame) frames, zero-padding the last one."""
    n = -(-len(pcm) // frame)
    out = np.zeros(n * frame, dtype=np.int16)
    out[: len(pcm)] = pcm
    return out.reshape(n, frame)


def dbfs(x: npt.ArrayLike) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.mean(a**2) / 32768.0**2 + 1e-20))


def energy_vad(
    pcm: Pcm,
    frame: int = FRAME,
    margin_db: float = 12.0,
    hangover: int = 15,
    lead: int = 2,
) -> npt.NDArray[np.bool_]:
    """Per-frame speech flags: energy ``margin_db`` above the noise floor, with hangover.

    The floor is the 10th percentile of frame energies (robust while a leg is
    silent most of the time); ``hangover`` frames after speech and ``lead``
    frames before it stay active so that word edges are not clipped.
    """
    f = frames(pcm, frame).astype(np.float64)
    e = 10 * np.log10(np.mean(f**2, axis=1) + 1.0)
    floor = float(np.percentile(e, 10))
    raw = e > floor + margin_db
    out = raw.copy()
    idx = np.flatnonzero(raw)
    for i in idx:
        out[max(i - lead, 0) : i + hangover + 1] = True
    return out


def pesq_nb(ref: Pcm, deg: Pcm, window_s: float = 30.0, rate: int = RATE) -> float:
    """PESQ-NB (MOS-LQO) of ``deg`` against ``ref``, averaged over <= 30 s windows.

    Both signals are cut to the same length; windows with no speech in the
    reference (PESQ cannot score them) are left out; the last window is merged
    into the previous one when shorter than 5 s.
    """
    from pesq import pesq

    n = min(len(ref), len(deg))
    w = int(window_s * rate)
    bounds = list(range(0, n, w)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 5 * rate:
        del bounds[-2]
    scores = []
    weights = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        r = ref[a:b].astype(np.float32)
        d = deg[a:b].astype(np.float32)
        try:
            scores.append(pesq(rate, r, d, "nb"))
        except Exception as e:  # pesq.NoUtterancesError etc.: a silent window
            if "utterance" not in str(e).lower() and "NoUtterances" not in type(e).__name__:
                raise
            continue
        weights.append(b - a)
    if not scores:
        raise ValueError("PESQ found no speech in any window")
    return float(np.average(scores, weights=weights))


def _run_decoder(cmd: list[str]) -> bytes:
    res = subprocess.run(cmd, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    return res.stdout


def decode_opusdec(path: str | Path, channels: int, rate: int = 48000) -> Pcm:
    """Decode with opus-tools' opusdec (libopus) to int16 (n, channels) at ``rate``."""
    raw = _run_decoder(
        ["opusdec", "--quiet", "--no-dither", "--rate", str(rate), "--force-wav", str(path), "-"]
    )
    if raw[:4] != b"RIFF":
        raise RuntimeError("opusdec did not write a WAV")
    return _wav_pcm(raw, channels)


def _wav_pcm(raw: bytes, channels: int) -> Pcm:
    pos = 12
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        size = int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if cid == b"data":
            body = raw[pos + 8 :]
            if size not in (0, 0xFFFFFFFF) and size <= len(body):
                body = body[:size]
            body = body[: len(body) // (2 * channels) * 2 * channels]
            return np.frombuffer(body, dtype="<i2").astype(np.int16).reshape(-1, channels)
        pos += 8 + size + (size & 1)
    raise RuntimeError("no data chunk in WAV")


def decode_ffmpeg(path: str | Path, channels: int, rate: int = 48000, libopus: bool = False) -> Pcm:
    """Decode with ffmpeg: its built-in Opus decoder, or libopus (``-c:a libopus``)."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
    if libopus:
        cmd += ["-c:a", "libopus"]
    cmd += ["-i", str(path), "-ar", str(rate), "-ac", str(channels), "-f", "s16le", "-"]
    raw = _run_decoder(cmd)
    return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(-1, channels)


def resample_48k_to_8k(pcm48: Pcm) -> Pcm:
    """48 kHz -> 8 kHz with sox (for scoring what the tools decoded at 48 kHz)."""
    ch = 1 if pcm48.ndim == 1 else pcm48.shape[1]
    raw = subprocess.run(
        # -D: no dither, so the same input always scores the same
        [
            "sox",
            "-D",
            "-t",
            "raw",
            "-r",
            "48000",
            "-e",
            "signed",
            "-b",
            "16",
            "-L",
            "-c",
            str(ch),
            "-",
            "-r",
            "8000",
            "-t",
            "raw",
            "-",
        ],
        input=np.ascontiguousarray(pcm48, dtype="<i2").tobytes(),
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(-1, ch)
