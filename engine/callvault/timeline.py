"""The call timeline's constants (docs/format.md section 1), in one place.

A base module: it imports nothing, and every layer of callvault may import it.
Each value is a fact of the stored format, not a tunable: changing one changes
what every stored call means.
"""

from __future__ import annotations

# docs/format.md 1: every leg is 8 kHz mono (G.711's rate, RFC 3551; the Opus
# encoder's input rate, section 4).
SAMPLE_RATE = 8000

# docs/format.md 1: a frame is 20 ms, the unit of the timeline; frame n of
# every leg is the same 20 ms of the call.
FRAME_MS = 20
FRAME_US = FRAME_MS * 1000  # 20_000: frame n starts FRAME_US * n after the call start
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 160: frame n is samples [160 n, 160 n + 160)
FRAMES_PER_SECOND = 1000 // FRAME_MS  # 50: seconds = frames / 50

# docs/format.md 1 and 8.5: a leg's audio record holds this many frames (about
# one second); live ingest cuts records at absolute multiples of it.
FRAMES_PER_RECORD = 50

# docs/format.md 4 and 6: Ogg Opus counts time in 48 kHz samples (granule
# positions, pre-skip, RFC 7845 4), whatever the input rate.
OPUS_GRANULE_RATE = 48000
FRAME_SAMPLES_48K = OPUS_GRANULE_RATE * FRAME_MS // 1000  # 960: one frame in granule units

# docs/format.md 4: the stored stream's encoder lookahead (libopus at 8 kHz,
# ``_opus.Encoder.lookahead``), written as the Ogg pre-skip: decoded audio
# runs this far behind the timeline.
OPUS_PRE_SKIP_48K = 312
OPUS_DELAY_SAMPLES = OPUS_PRE_SKIP_48K * SAMPLE_RATE // OPUS_GRANULE_RATE  # 52 at 8 kHz


def frames_us(frames: int) -> int:
    """Microseconds spanned by ``frames`` frames (frame n starts at ``frames_us(n)``)."""
    return frames * FRAME_US


def frames_seconds(frames: int) -> float:
    """Seconds spanned by ``frames`` frames."""
    return frames / FRAMES_PER_SECOND


def samples_ms(samples: int) -> int:
    """Milliseconds (rounded down) of ``samples`` at SAMPLE_RATE, for event times."""
    return samples * 1000 // SAMPLE_RATE
